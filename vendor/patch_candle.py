"""Patches a candle-core source tree (argument: its root); see vendor/README.md.

src/backprop.rs: a gradient's first contribution is stored as is instead of being
added to a fresh zeros tensor. Each `let S = grads.or_insert(A)?;` whose S is next used only in
`*S = S.add(&E)?` / `*S = S.sub(&E)?` (and `S.dims()`) becomes `grads.accumulate(A, &E)?` /
`grads.accumulate_neg(A, &E)?`."""
import re, sys
root = sys.argv[1]
path = root + '/src/backprop.rs'
src = open(path).read().split('\n')
out, i, done, kept = [], 0, 0, 0
decl = re.compile(r'^(\s*)let (\w+) = grads\.or_insert\((\w+)\)\?;\s*$')
while i < len(src):
    m = decl.match(src[i])
    if not m:
        out.append(src[i]); i += 1; continue
    s, a = m.group(2), m.group(3)
    upd = re.compile(r'^(\s*)\*' + s + r' = ' + s + r'\.(add|sub)\(&(.*)\)\?(;?)\s*$')
    j, ok = i + 1, False
    while j < len(src) and j < i + 12:
        mu = upd.match(src[j])
        if mu:
            ok = True; break
        if re.search(r'\b' + s + r'\b', src[j].replace(s + '.dims()', '')):
            break
        j += 1
    if not ok:
        kept += 1; out.append(src[i]); i += 1; continue
    ind, op, e, semi = mu.groups()
    e = e.replace(s + '.dims()', a + '.dims()')
    fn = 'accumulate' if op == 'add' else 'accumulate_neg'
    out.extend(src[i + 1:j])
    out.append(f'{ind}grads.{fn}({a}, &{e})?{semi}')
    done += 1; i = j + 1
text = '\n'.join(out)
helper = '''
    /// Adds `grad` to the gradient of `tensor`; the first contribution is stored as is (tensors are
    /// immutable), with no zeros tensor to add it to.
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                *entry.get_mut() = sum;
            }
            Entry::Vacant(entry) => {
                entry.insert(grad.clone());
            }
        }
        Ok(())
    }

    /// Subtracts `grad` from the gradient of `tensor`, as [`Self::accumulate`] adds.
    fn accumulate_neg(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().sub(grad)?;
                *entry.get_mut() = sum;
            }
            Entry::Vacant(entry) => {
                entry.insert(grad.neg()?);
            }
        }
        Ok(())
    }

    /// Get the gradient tensor associated with the given tensor, or, if it does not exist,'''
anchor = '\n    /// Get the gradient tensor associated with the given tensor, or, if it does not exist,'
assert anchor in text
text = text.replace(anchor, helper, 1)
# A contribution stored as is can be a strided view (a transpose's gradient, say). Upstream's sums were
# always contiguous, and its backward formulas (index_add's base, for one) rely on that: a node's
# gradient is made contiguous when it is taken (a no-op for the usual contiguous one), and so are the
# sums handed back in the GradStore and the ones `or_insert` still hands out.
taken = """                .expect("candle internal error - grad not populated");"""
assert text.count(taken) == 1
text = text.replace(taken, taken + """
            // Stored as is (see `GradStore::accumulate`), a contribution can be a strided view; the
            // formulas below were written for upstream's contiguous sums.
            let grad = grad.contiguous()?;""")
ret = """        Ok(grads)
    }
"""
assert text.count(ret) == 1
text = text.replace(ret, """        grads.make_contiguous()?;
""" + ret)
old_or = """            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let grad = tensor.zeros_like()?;"""
assert text.count(old_or) == 1
text = text.replace(old_or, """            Entry::Occupied(entry) => {
                let grad = entry.into_mut();
                if !grad.is_contiguous() {
                    *grad = grad.contiguous()?;
                }
                grad
            }
            Entry::Vacant(entry) => {
                let grad = tensor.zeros_like()?;""")
helper2 = """
    /// Makes every stored gradient contiguous, as upstream's sums always were.
    fn make_contiguous(&mut self) -> Result<()> {
        for grad in self.0.values_mut() {
            if !grad.is_contiguous() {
                *grad = grad.contiguous()?;
            }
        }
        Ok(())
    }
"""
anchor2 = "\n    /// Subtracts `grad` from the gradient of `tensor`, as [`Self::accumulate`] adds."
assert text.count(anchor2) == 1
text = text.replace(anchor2, helper2 + anchor2)
open(path, 'w').write(text)
print(f'backprop.rs: rewritten {done}, left {kept}', file=sys.stderr)

