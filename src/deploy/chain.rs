//! Running tiles through the bundle: the block chain (only kept blocks, values handed from session to
//! session without copies to ndarrays), the monolithic full graph, and the policy.

use autopath_bundle::names::{FEATURES, IMAGE, KEEP, PROBABILITIES, VOLUME, X, Y};
use ndarray::{Array2, Array5, ArrayView5};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, DynValueRef, TensorRef};

use super::session::{Residency, Sessions};
use crate::error::{Error, Result};

fn ort_err(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::ort(what, e)
}

/// Runs a graph whose output is `probabilities` and hands `f` a host view of them.
fn probabilities_of<'v, R>(
    session: &mut Session,
    what: &str,
    inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'v>)>,
    f: impl FnOnce(ArrayView5<f32>) -> R,
) -> Result<R> {
    let mut out = session.run(inputs).map_err(|e| ort_err(what, e))?;
    let p = out.remove(PROBABILITIES).ok_or_else(|| ort_err(what, format!("graph has no output {PROBABILITIES:?}")))?;
    with_view(&p, what, f)
}

fn run_one(session: &mut Session, what: &str, input: &str, value: &DynValue, output: &str) -> Result<DynValue> {
    let mut out = session.run(ort::inputs![input => value]).map_err(|e| ort_err(what, e))?;
    out.remove(output).ok_or_else(|| ort_err(what, format!("graph has no output {output:?}")))
}

/// Runs one session with its output bound to `memory` (IoBinding): on a GPU provider the value stays
/// in device memory and the next session reads it there. The input may live anywhere; ONNX Runtime
/// copies it to the session's device if needed (only the stem's input, from the host).
fn run_bound(
    session: &mut Session,
    what: &str,
    input: &str,
    value: &DynValue,
    output: &str,
    memory: &MemoryInfo,
) -> Result<DynValue> {
    let mut binding = session.create_binding().map_err(|e| ort_err(what, e))?;
    binding.bind_input(input, value).map_err(|e| ort_err(what, e))?;
    binding.bind_output_to_device(output, memory).map_err(|e| ort_err(what, e))?;
    let mut out = session.run_binding(&binding).map_err(|e| ort_err(what, e))?;
    out.remove(output).ok_or_else(|| ort_err(what, format!("graph has no output {output:?}")))
}

/// Memory the chain's intermediate values are bound to, if any.
fn chain_memory(residency: Residency) -> Result<Option<MemoryInfo<'static>>> {
    let info = |device, id, memory| {
        MemoryInfo::new(device, id, AllocatorType::Device, memory).map(Some).map_err(|e| ort_err("memory info", e))
    };
    match residency {
        Residency::Host => Ok(None),
        Residency::BoundHost => info(AllocationDevice::CPU, 0, MemoryType::Default),
        Residency::Cuda(id) => info(AllocationDevice::CUDA, id, MemoryType::Default),
    }
}

/// A tensor over the caller's tiles, without a copy: at the paper's tile a batch of two is 25 MB, and
/// copying it (into a freshly faulted allocation) cost more than the whole network on a GPU. The
/// tiles must be in standard layout (`batch_of_tiles` writes them so).
fn view_value<'a>(tiles: &'a ArrayView5<'a, f32>) -> Result<DynValueRef<'a>> {
    Ok(TensorRef::from_array_view(tiles.view()).map_err(|e| ort_err("input tensor", e))?.into_dyn())
}

/// Hands `f` a view of a host output, without copying it.
fn with_view<R>(v: &DynValue, what: &str, f: impl FnOnce(ArrayView5<f32>) -> R) -> Result<R> {
    let a = v.try_extract_array::<f32>().map_err(|e| ort_err(what, e))?;
    Ok(f(a.into_dimensionality().map_err(|e| ort_err(what, e))?))
}

/// A standard-layout view of `tiles` (a copy only if they are not already).
fn standard(tiles: ArrayView5<f32>) -> ndarray::CowArray<f32, ndarray::Ix5> {
    if tiles.is_standard_layout() {
        tiles.into()
    } else {
        tiles.as_standard_layout().into_owned().into()
    }
}

/// Runs a whole-network graph on standard-layout tiles: through its bound buffers where it has them,
/// else as a plain run on a view of the tiles.
fn run_whole<R>(
    g: &mut super::session::WholeGraph,
    what: &str,
    tiles: ArrayView5<f32>,
    f: impl FnOnce(ArrayView5<f32>) -> R,
) -> Result<R> {
    match g.replay.as_mut() {
        Some(r) => r.run(&mut g.session, what, tiles, f),
        None => {
            let p = run_one(&mut g.session, what, IMAGE, &*view_value(&tiles)?, PROBABILITIES)?;
            with_view(&p, what, f)
        }
    }
}

/// One graph of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// The stem.
    Stem,
    /// Block n, kept.
    Block(usize),
    /// Block n's projection shortcut (block dropped).
    Shortcut(usize),
}

impl Sessions {
    /// Runs one segment of the backbone on an array (no copy in; one copy out). Used where many paths
    /// share intermediate results that must be kept (evaluation and policy rewards).
    pub fn run_segment(&mut self, segment: Segment, x: ndarray::ArrayView5<f32>) -> Result<Array5<f32>> {
        let (session, what, input, output) = match segment {
            Segment::Stem => (&mut self.stem, "stem".to_string(), IMAGE, FEATURES),
            Segment::Block(n) => (&mut self.blocks[n], format!("block {n}"), X, Y),
            Segment::Shortcut(n) => (
                self.shortcuts[n]
                    .as_mut()
                    .ok_or_else(|| Error::invalid("segment", format!("block {n} has no projection shortcut")))?,
                format!("shortcut {n}"),
                X,
                Y,
            ),
        };
        let x = x.as_standard_layout();
        let t = TensorRef::from_array_view(x.view()).map_err(|e| ort_err(&what, e))?;
        let mut out = session.run(ort::inputs![input => t]).map_err(|e| ort_err(&what, e))?;
        let v = out.remove(output).ok_or_else(|| ort_err(&what, format!("graph has no output {output:?}")))?;
        with_view(&v, &what, |a| a.to_owned())
    }

    /// The head on arrays: the backbone's output `x` and, for the skip decoder, the low-level features.
    pub fn run_head(&mut self, x: ArrayView5<f32>, low: Option<ArrayView5<f32>>) -> Result<Array5<f32>> {
        self.run_head_with(x, low, |a| a.to_owned())
    }

    /// [`Sessions::run_head`], handing `f` a view of the probabilities instead of a copy.
    pub fn run_head_with<R>(
        &mut self,
        x: ArrayView5<f32>,
        low: Option<ArrayView5<f32>>,
        f: impl FnOnce(ArrayView5<f32>) -> R,
    ) -> Result<R> {
        let x = x.as_standard_layout();
        let low = low.as_ref().map(|l| l.as_standard_layout());
        let xv = TensorRef::from_array_view(x.view()).map_err(|e| ort_err("head", e))?;
        let lv =
            low.as_ref().map(|l| TensorRef::from_array_view(l.view())).transpose().map_err(|e| ort_err("head", e))?;
        self.head_values(xv.into(), lv.map(Into::into), f)
    }

    /// Runs the head graph and hands `f` its probabilities, in host memory whatever the inputs' device.
    fn head_values<'v, R>(
        &mut self,
        x: SessionInputValue<'v>,
        low: Option<SessionInputValue<'v>>,
        f: impl FnOnce(ArrayView5<f32>) -> R,
    ) -> Result<R> {
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'v>)> = vec![(X.into(), x)];
        match (&self.low_level, low) {
            (Some(l), Some(v)) => inputs.push((l.input.clone().into(), v)),
            (Some(l), None) => {
                return Err(Error::ort("head", format!("the skip decoder's input {:?} was not given", l.input)))
            }
            (None, _) => {}
        }
        probabilities_of(&mut self.head, "head", inputs, f)
    }

    /// The split head's first graph: the skip part of the low-level features `low` (one copy out).
    pub fn run_skip_part(&mut self, low: ArrayView5<f32>) -> Result<Array5<f32>> {
        let what = "head_low";
        let (Some(l), Some(split)) = (&self.low_level, self.split_head.as_mut()) else {
            return Err(ort_err(what, "the split head is not open"));
        };
        let low = low.as_standard_layout();
        let t = TensorRef::from_array_view(low.view()).map_err(|e| ort_err(what, e))?;
        let mut out = split.low.run(ort::inputs![l.input.as_str() => t]).map_err(|e| ort_err(what, e))?;
        let v = out
            .remove(&split.output)
            .ok_or_else(|| ort_err(what, format!("graph has no output {:?}", split.output)))?;
        with_view(&v, what, |a| a.to_owned())
    }

    /// The split head's second graph on the backbone's output `x` and a skip part
    /// ([`Sessions::run_skip_part`]): the probabilities the head gives for `x` and the low-level
    /// features, handed to `f` as a view.
    pub fn run_head_after_skip_with<R>(
        &mut self,
        x: ArrayView5<f32>,
        skip: ArrayView5<f32>,
        f: impl FnOnce(ArrayView5<f32>) -> R,
    ) -> Result<R> {
        let what = "head_rest";
        let split = self.split_head.as_mut().ok_or_else(|| ort_err(what, "the split head is not open"))?;
        let (x, skip) = (x.as_standard_layout(), skip.as_standard_layout());
        let xv = TensorRef::from_array_view(x.view()).map_err(|e| ort_err(what, e))?;
        let sv = TensorRef::from_array_view(skip.view()).map_err(|e| ort_err(what, e))?;
        let inputs = vec![(X.into(), xv.into()), (split.output.clone().into(), sv.into())];
        probabilities_of(&mut split.rest, what, inputs, f)
    }

    /// Probabilities `[B, K, tile]` for tiles `[B, 1, tile]` on a path: stem, then per block the
    /// block graph if kept, the shortcut graph if dropped with a projection, nothing if dropped with
    /// an identity shortcut; then the head (with the skip decoder, also fed the value after the last
    /// block of stage 0, which is kept alive until then).
    ///
    /// With a bound residency the stem's and every block's output stay where the provider put them
    /// (GPU memory under CUDA/TensorRT); only the head's probabilities come back to the host.
    pub fn run_chain(&mut self, tiles: ArrayView5<f32>, keep: &[bool]) -> Result<Array5<f32>> {
        self.run_chain_with(tiles, keep, |a| a.to_owned())
    }

    /// [`Sessions::run_chain`], handing `f` a view of the probabilities instead of a copy.
    pub fn run_chain_with<R>(
        &mut self,
        tiles: ArrayView5<f32>,
        keep: &[bool],
        f: impl FnOnce(ArrayView5<f32>) -> R,
    ) -> Result<R> {
        let memory = chain_memory(self.residency)?;
        let step = |s: &mut Session, what: &str, input: &str, v: &DynValue, output: &str| match &memory {
            Some(m) => run_bound(s, what, input, v, output, m),
            None => run_one(s, what, input, v, output),
        };
        let after = self.low_level.as_ref().map(|l| l.after_block);
        let tiles = standard(tiles);
        let tiles = tiles.view();
        // ort 2.0.0-rc.15 clones a borrowed input bound to a session on the same device, and that
        // clone deadlocks (its identity-session lock is taken twice): bound to host memory, the stem
        // gets an owned copy. Under CUDA the devices differ, nothing is cloned, and the view is used
        // (run so on an H200).
        let owned = match self.residency {
            Residency::BoundHost => Some(
                ort::value::Tensor::from_array(tiles.to_owned()).map_err(|e| ort_err("input tensor", e))?.into_dyn(),
            ),
            _ => None,
        };
        let view = view_value(&tiles)?;
        let input: &DynValue = owned.as_ref().unwrap_or(&view);
        let mut h = step(&mut self.stem, "stem", IMAGE, input, FEATURES)?;
        // `low` gets the value after block `after` when the next block replaces it; if none does, it
        // is still `h` at the head.
        let (mut low, mut low_is_current) = (None, false);
        for (n, &k) in keep.iter().enumerate() {
            let next = if k {
                Some(step(&mut self.blocks[n], &format!("block {n}"), X, &h, Y)?)
            } else if let Some(s) = self.shortcuts[n].as_mut() {
                Some(step(s, &format!("shortcut {n}"), X, &h, Y)?)
            } else {
                None
            };
            if let Some(v) = next {
                let previous = std::mem::replace(&mut h, v);
                if low_is_current {
                    low = Some(previous);
                    low_is_current = false;
                }
            }
            low_is_current |= after == Some(n);
        }
        let low = if low_is_current { Some(&h) } else { low.as_ref() };
        self.head_values((&h).into(), low.map(Into::into), f)
    }

    /// Probabilities `[B, K, tile]` on a path through the fewest sessions: `full.onnx` when every block
    /// is kept, the bundle's whole-path graph when it has one for the path, else one joined from its
    /// segment graphs ([`Sessions::joined_session`]), else the chain of block graphs
    /// ([`Sessions::run_chain_with`]). All three compute the same network; one session per call
    /// saves the chain's per-session overhead and layout conversions at every graph boundary.
    pub fn run_path_with<R>(
        &mut self,
        tiles: ArrayView5<f32>,
        keep: &[bool],
        f: impl FnOnce(ArrayView5<f32>) -> R,
    ) -> Result<R> {
        if keep.iter().all(|&k| k) {
            return self.run_full_with(tiles, f);
        }
        let tiles = standard(tiles);
        let tiles = tiles.view();
        if let Some(g) = self.path_session(keep)? {
            return run_whole(g, "path graph", tiles, f);
        }
        match self.joined_session(keep)? {
            Some(g) => run_whole(g, "joined path graph", tiles, f),
            None => self.run_chain_with(tiles, keep, f),
        }
    }

    /// Probabilities from the monolithic `full.onnx`.
    pub fn run_full(&mut self, tiles: ArrayView5<f32>) -> Result<Array5<f32>> {
        self.run_full_with(tiles, |a| a.to_owned())
    }

    /// [`Sessions::run_full`], handing `f` a view of the probabilities instead of a copy.
    pub fn run_full_with<R>(&mut self, tiles: ArrayView5<f32>, f: impl FnOnce(ArrayView5<f32>) -> R) -> Result<R> {
        let tiles = standard(tiles);
        let tiles = tiles.view();
        run_whole(self.full()?, "full", tiles, f)
    }

    /// Keep probabilities `[B, N]` for policy inputs `[B, 1, d, h, w]`.
    pub fn run_policy(&mut self, volumes: ArrayView5<f32>) -> Result<Array2<f32>> {
        let s = self.policy.as_mut().ok_or_else(|| {
            Error::request("path", "the bundle has no policy (compiled without --policy); use --path full or a mask")
        })?;
        let volumes = standard(volumes);
        let volumes = volumes.view();
        let p = run_one(s, "policy", VOLUME, &*view_value(&volumes)?, KEEP)?;
        let a = p.try_extract_array::<f32>().map_err(|e| ort_err("policy", e))?;
        a.to_owned().into_dimensionality().map_err(|e| ort_err("policy", e))
    }
}
