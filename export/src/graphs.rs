//! From trained Candle modules to ONNX graphs: BatchNorm folded into the preceding convolution, one
//! emitter per segment (stem, block, shortcut, head, policy) so that `full.onnx` is built from the
//! very same emitters as the per-block graphs.

use autopath_models::block::{Block, ConvBn};
use autopath_models::deeplab::{Decoder, DecoderNet, DeepLab3d, SkipDecoder, STEM_POOL};
use autopath_models::layers::{BatchNorm3d, Conv3d};
use autopath_models::policy::PolicyNet;
use autopath_models::spec::Output;
use candle_core::{DType, Tensor};

use autopath_models::layers::trilinear_taps;

use autopath_bundle::{names, Conv3dLayout, StemForm};

use crate::builder::{ConvAttrs, Dim, GraphBuilder};
use crate::{Error, Result};

fn values(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| Error::Tensor { name: what.to_string(), reason: e.to_string() })
}

/// Per-channel `(scale, shift)` of an evaluation-mode BatchNorm: `y = x·scale + shift`.
fn bn_affine(bn: &BatchNorm3d, name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let gamma = values(bn.gamma(), name)?;
    let beta = values(bn.beta(), name)?;
    let (m, v) = bn.running_stats();
    let (mean, var) = (values(m, name)?, values(v, name)?);
    let eps = bn.eps() as f32;
    let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
    let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    Ok((scale, shift))
}

/// A convolution's weight with BatchNorm folded in, and the resulting bias.
fn folded(conv: &Conv3d, bn: Option<&BatchNorm3d>, name: &str) -> Result<(Vec<usize>, Vec<f32>, Vec<f32>)> {
    let dims = conv.weight().dims().to_vec();
    let mut w = values(conv.weight(), name)?;
    let co = dims[0];
    let mut bias = match conv.bias() {
        Some(b) => values(b, name)?,
        None => vec![0.0; co],
    };
    if let Some(bn) = bn {
        let (scale, shift) = bn_affine(bn, name)?;
        let per = w.len() / co;
        for (c, chunk) in w.chunks_mut(per).enumerate() {
            chunk.iter_mut().for_each(|v| *v *= scale[c]);
        }
        bias = bias.iter().zip(scale.iter().zip(&shift)).map(|(b, (s, t))| b * s + t).collect();
    }
    Ok((dims, w, bias))
}

fn attrs(conv: &Conv3d) -> ConvAttrs {
    let p = conv.params();
    let d = conv.weight().dims();
    ConvAttrs { kernel: [d[2], d[3], d[4]], stride: p.stride, padding: p.padding, dilation: p.dilation }
}

/// conv + folded BN.
fn conv_bn(g: &mut GraphBuilder, name: &str, x: &str, unit: &ConvBn) -> Result<String> {
    let (dims, w, b) = folded(&unit.conv, Some(&unit.bn), name)?;
    Ok(g.conv(name, x, (&dims, &w), &b, attrs(&unit.conv)))
}

/// conv + folded BN on an input of spatial `size`, keeping along each axis only the taps that can read
/// the input. Why: with the same padding and a dilation at least the input's size, every tap but the
/// centre reads only zero padding, and ASPP's rates (6, 12, 18) are that large on the small feature
/// map of a tile (8×3×3 on the demo's 32×96×96 tiles, 12×8×8 on the paper's 48×256×256): the rate-12
/// and rate-18 branches are 1×1×1 convolutions at both sizes, the rate-6 branch 3×1×1 on the demo's.
/// The head's inputs are fixed to the tile's sizes, so no other input can reach these graphs.
fn conv_bn_live_taps(g: &mut GraphBuilder, name: &str, x: &str, unit: &ConvBn, size: [usize; 3]) -> Result<String> {
    let (mut dims, mut w, b) = folded(&unit.conv, Some(&unit.bn), name)?;
    let mut a = attrs(&unit.conv);
    for axis in 0..3 {
        let (k, d) = (a.kernel[axis], a.dilation[axis]);
        if k > 1 && k % 2 == 1 && a.stride[axis] == 1 && 2 * a.padding[axis] == d * (k - 1) && d >= size[axis] {
            w = centre_tap(&dims, &w, axis);
            dims[2 + axis] = 1;
            (a.kernel[axis], a.padding[axis], a.dilation[axis]) = (1, 0, 1);
        }
    }
    Ok(g.conv(name, x, (&dims, &w), &b, a))
}

/// The weight `[Co, Ci, kd, kh, kw]` restricted to the centre of its kernel along spatial `axis`.
fn centre_tap(dims: &[usize], w: &[f32], axis: usize) -> Vec<f32> {
    let k = dims[2 + axis];
    let inner: usize = dims[3 + axis..].iter().product();
    let outer: usize = dims[..2 + axis].iter().product();
    (0..outer).flat_map(|o| &w[(o * k + k / 2) * inner..(o * k + k / 2 + 1) * inner]).copied().collect()
}

/// The stem: conv 7³ s2 (+BN) → ReLU → max-pool 3 s2; the convolution as space-to-depth and a
/// stride-1 convolution where the builder asks for it ([`StemForm::SpaceToDepth`]).
pub fn emit_stem(g: &mut GraphBuilder, x: &str, net: &DeepLab3d) -> Result<String> {
    if g.stem_form() == StemForm::Conv {
        return stem_like(g, "stem", x, &net.stem);
    }
    let (dims, w, b) = folded(&net.stem.conv, Some(&net.stem.bn), "stem.conv")?;
    let a = attrs(&net.stem.conv);
    if dims[1] != 1 || a.kernel != [7; 3] || a.stride != [2; 3] || a.padding != [3; 3] || a.dilation != [1; 3] {
        return Err(Error::Tensor {
            name: "stem.conv".into(),
            reason: format!("space-to-depth needs a 7³ stride-2 convolution of one channel, not {dims:?} {a:?}"),
        });
    }
    let blocks = space_to_depth(g, "stem.s2d", x);
    let (w2, dims2) = stem_weight_s2d(&w, dims[0]);
    let c = g.conv_padded("stem.conv", &blocks, (&dims2, &w2), &b, ([2; 3], [1; 3]));
    let r = g.relu("stem.relu", &c);
    Ok(g.max_pool("stem.pool", &r, STEM_POOL.kernel, STEM_POOL.stride, STEM_POOL.padding))
}

/// `[N, 1, D, H, W]` → `[N, 8, D/2, H/2, W/2]`, channel `4·pd + 2·ph + pw` holding voxel
/// `(2z + pd, 2y + ph, 2x + pw)`. Reshapes copy the axes they keep (`0`) and infer one (`-1`), so the
/// graph takes any even sizes.
fn space_to_depth(g: &mut GraphBuilder, name: &str, x: &str) -> String {
    let n = |s: &str| format!("{name}.{s}");
    // [N, 1, D, H, W] → [N, D/2, pd, H, W] → [N, D/2, pd, H, W/2, pw]
    let a = g.reshape(&n("depth"), x, &[0, -1, 2, 0, 0]);
    let b = g.reshape(&n("width"), &a, &[0, 0, 0, 0, -1, 2]);
    // → [N, D/2, pd, W/2, pw, H] → [N, D/2, pd, W/2, pw, H/2, ph]
    let c = g.transpose(&n("height_last"), &b, &[0, 1, 2, 4, 5, 3]);
    let d = g.reshape(&n("height"), &c, &[0, 0, 0, 0, 0, -1, 2]);
    // → [N, D/2, H/2, W/2, pd, ph, pw] → [N, D/2, H/2, W/2, 8] → [N, 8, D/2, H/2, W/2]
    let e = g.transpose(&n("phases_last"), &d, &[0, 1, 5, 3, 2, 6, 4]);
    let f = g.reshape(&n("channels"), &e, &[0, 0, 0, 0, 8]);
    g.transpose(&n("channels_first"), &f, &[0, 4, 1, 2, 3])
}

/// The stem's weight `[Co, 1, 7, 7, 7]` for [`space_to_depth`]'s input: `[Co, 8, 4, 4, 4]`, tap `j` of
/// phase `p` along an axis being the original tap `2j + p − 1` (zero where that falls outside 0..7), so
/// that output `o` sums input voxels `2o − 3 … 2o + 3` as the stride-2 convolution does (pads 2 before,
/// 1 after).
fn stem_weight_s2d(w: &[f32], co: usize) -> (Vec<f32>, Vec<usize>) {
    let tap = |j: usize, p: usize| (2 * j + p).checked_sub(1).filter(|k| *k < 7);
    let mut out = vec![0.0f32; co * 8 * 64];
    for o in 0..co {
        for c in 0..8 {
            let (pd, ph, pw) = (c / 4, c / 2 % 2, c % 2);
            for j in 0..64 {
                let (jd, jh, jw) = (j / 16, j / 4 % 4, j % 4);
                if let (Some(kd), Some(kh), Some(kw)) = (tap(jd, pd), tap(jh, ph), tap(jw, pw)) {
                    out[(o * 8 + c) * 64 + j] = w[o * 343 + (kd * 7 + kh) * 7 + kw];
                }
            }
        }
    }
    (out, vec![co, 8, 4, 4, 4])
}

fn stem_like(g: &mut GraphBuilder, prefix: &str, x: &str, unit: &ConvBn) -> Result<String> {
    let c = conv_bn(g, &format!("{prefix}.conv"), x, unit)?;
    let r = g.relu(&format!("{prefix}.relu"), &c);
    Ok(g.max_pool(&format!("{prefix}.pool"), &r, STEM_POOL.kernel, STEM_POOL.stride, STEM_POOL.padding))
}

/// A block's shortcut: the projection conv (+BN), or `x` itself.
pub fn emit_shortcut(g: &mut GraphBuilder, prefix: &str, x: &str, block: &Block) -> Result<String> {
    match &block.shortcut {
        Some(p) => conv_bn(g, &format!("{prefix}.downsample"), x, p),
        None => Ok(x.to_string()),
    }
}

/// A kept block: `relu(shortcut(x) + F(x))`.
pub fn emit_block(g: &mut GraphBuilder, prefix: &str, x: &str, block: &Block) -> Result<String> {
    let r = emit_shortcut(g, prefix, x, block)?;
    let mut h = x.to_string();
    let last = block.branch.len() - 1;
    for (i, unit) in block.branch.iter().enumerate() {
        h = conv_bn(g, &format!("{prefix}.conv{}", i + 1), &h, unit)?;
        if i < last {
            h = g.relu(&format!("{prefix}.relu{}", i + 1), &h);
        }
    }
    let s = g.add(&format!("{prefix}.add"), &r, &h);
    Ok(g.relu(&format!("{prefix}.out"), &s))
}

/// What the skip decoder reads besides the ASPP output.
#[derive(Debug, Clone, Copy)]
pub enum LowLevel<'a> {
    /// The low-level features: the output after the last block of stage 0.
    Features(&'a str),
    /// The part of the decoder's first convolution that reads only those features
    /// ([`emit_skip_part`]), computed by another graph. It depends only on the blocks of stage 0, so
    /// when many paths share those, it is computed once for all of them.
    SkipPart(&'a str),
}

/// ASPP + decoder + trilinear upsampling to `tile` + sigmoid/softmax. `low`: what the skip decoder
/// reads besides the ASPP output (None for the paper's decoder).
pub fn emit_head(
    g: &mut GraphBuilder,
    x: &str,
    low: Option<LowLevel>,
    net: &DeepLab3d,
    tile: [usize; 3],
) -> Result<String> {
    let cost = net.spec().cost(tile);
    let at = |n: usize| cost.blocks.get(n).map(|b| [b.output[1], b.output[2], b.output[3]]);
    let feature = at(cost.blocks.len().wrapping_sub(1));
    let aspp = emit_aspp(g, x, net, feature)?;
    // The logits' grid: the low-level features' (skip), twice the backbone's (paper).
    let (logits, grid) = match &net.decoder {
        DecoderNet::Paper(dec) => (emit_paper_decoder(g, &aspp, dec)?, feature.map(|f| f.map(|n| 2 * n))),
        DecoderNet::Skip(dec) => {
            let low = low.ok_or_else(|| Error::Tensor {
                name: "decoder".into(),
                reason: "the skip decoder needs the low-level features as a second input".into(),
            })?;
            let low_grid = net.spec().low_level_block().and_then(at);
            (emit_skip_decoder(g, &aspp, low, dec, feature.zip(low_grid))?, low_grid)
        }
    };
    let resized = match grid {
        Some(from) if g.layout() == Conv3dLayout::DepthTaps => {
            resize_by_products(g, "upsample", &logits, net.spec().output.channels(), from, tile)
        }
        _ => g.resize_trilinear("upsample", &logits, tile),
    };
    Ok(match net.spec().output {
        Output::Sigmoid => g.sigmoid(names::PROBABILITIES, &resized),
        Output::Softmax { .. } => g.softmax_channels(names::PROBABILITIES, &resized),
    })
}

/// Trilinear resizing (corners aligned) of `[N, C, from]` to `[N, C, to]` as one matrix product per
/// axis whose size changes. Why: ONNX Runtime's CPU `Resize` took 7.7 of the skip head's 31 ms on
/// the demo's tiles (4 × 1×8×24×24 → 32×96×96, 2 threads); the three products take under 1 ms.
fn resize_by_products(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    channels: usize,
    from: [usize; 3],
    to: [usize; 3],
) -> String {
    let ([d, h, w], [d2, h2, w2]) = (from, to);
    let mut y = x.to_string();
    if w != w2 {
        let m = g.weight(&format!("{name}.w_weights"), &[w, w2], &interpolation(w, w2, false));
        y = g.matmul(&format!("{name}.w"), &y, &m);
    }
    if h != h2 {
        let m = g.weight(&format!("{name}.h_weights"), &[h2, h], &interpolation(h, h2, true));
        y = g.matmul(&format!("{name}.h"), &m, &y);
    }
    if d != d2 {
        let c = channels as i64;
        let flat = g.reshape(&format!("{name}.planes"), &y, &[-1, c, d as i64, (h2 * w2) as i64]);
        let m = g.weight(&format!("{name}.d_weights"), &[d2, d], &interpolation(d, d2, true));
        let z = g.matmul(&format!("{name}.d"), &m, &flat);
        y = g.reshape(&format!("{name}.volume"), &z, &[-1, c, d2 as i64, h2 as i64, w2 as i64]);
    }
    y
}

/// The interpolation matrix from `n_in` to `n_out` samples, `[n_in, n_out]` (`x · M` resizes the
/// last axis) or, `transposed`, `[n_out, n_in]` (`M · x` resizes the second last).
fn interpolation(n_in: usize, n_out: usize, transposed: bool) -> Vec<f32> {
    let mut m = vec![0f64; n_in * n_out];
    for (j, (lo, hi, a, b)) in trilinear_taps(n_in, n_out).into_iter().enumerate() {
        let at = |i: usize| if transposed { j * n_in + i } else { i * n_out + j };
        m[at(lo)] += a;
        m[at(hi)] += b;
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// Along one axis, a convolution (kernel `k`, stride 1, same padding `pad`, dilation `dil`) of the
/// resized signal as one matrix `[k·n_in, n_out]`: row `(t, i)`, column `o` holds the weight with
/// which input sample `i` reaches output `o` through tap `t` — the interpolation weight of resized
/// position `o + t·dil − pad` (zero where that position is padding).
fn taps_of_resized(k: usize, pad: usize, dil: usize, n_in: usize, n_out: usize) -> Vec<f32> {
    let weights = trilinear_taps(n_in, n_out);
    let mut m = vec![0f64; k * n_in * n_out];
    for t in 0..k {
        for o in 0..n_out {
            let Some(r) = (o + t * dil).checked_sub(pad).filter(|&r| r < n_out) else { continue };
            let (lo, hi, a, b) = weights[r];
            m[(t * n_in + lo) * n_out + o] += a;
            m[(t * n_in + hi) * n_out + o] += b;
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// ASPP: four convolutional branches and image pooling, concatenated and projected. `feature`: the
/// backbone's output size for the tile, where the dilated branches' outer taps can be dropped.
fn emit_aspp(g: &mut GraphBuilder, x: &str, net: &DeepLab3d, feature: Option<[usize; 3]>) -> Result<String> {
    let aspp = &net.aspp;
    let mut branches = Vec::new();
    for (i, b) in aspp.branches.iter().enumerate() {
        let name = format!("aspp.b{i}");
        let c = match feature {
            Some(size) => conv_bn_live_taps(g, &name, x, b, size)?,
            None => conv_bn(g, &name, x, b)?,
        };
        branches.push(g.relu(&format!("aspp.b{i}.relu"), &c));
    }
    let pooled = g.global_avg_pool("aspp.pool.gap", x);
    let pc = conv_bn(g, "aspp.pool.conv", &pooled, &aspp.pooling)?;
    let pr = g.relu("aspp.pool.relu", &pc);
    branches.push(g.expand_like("aspp.pool.expand", &pr, &branches[0]));
    let refs: Vec<&str> = branches.iter().map(String::as_str).collect();
    let cat = g.concat_channels("aspp.concat", &refs);
    let pj = conv_bn(g, "aspp.project", &cat, &aspp.project)?;
    Ok(g.relu("aspp.project.relu", &pj))
}

/// The paper's decoder: ConvTranspose k2 s2 (+BN) → ReLU → 3×3×3 conv (+BN) → ReLU → classifier.
fn emit_paper_decoder(g: &mut GraphBuilder, x: &str, dec: &Decoder) -> Result<String> {
    let dims = dec.up.weight().dims().to_vec();
    let mut w = values(dec.up.weight(), "decoder.up")?;
    let (scale, shift) = bn_affine(&dec.up_bn, "decoder.up_bn")?;
    // ConvTranspose weight is [Ci, Co, 2, 2, 2]: fold the BN scale along Co.
    let (ci, co) = (dims[0], dims[1]);
    for i in 0..ci {
        for o in 0..co {
            w[(i * co + o) * 8..(i * co + o + 1) * 8].iter_mut().for_each(|v| *v *= scale[o]);
        }
    }
    let up = g.conv_transpose2("decoder.up", x, (&dims, &w), &shift);
    let up = g.relu("decoder.up.relu", &up);
    let c = conv_bn(g, "decoder.conv", &up, &dec.conv)?;
    let c = g.relu("decoder.relu", &c);
    let (dims, w, b) = folded(&dec.classifier, None, "decoder.classifier")?;
    Ok(g.conv("decoder.classifier", &c, (&dims, &w), &b, attrs(&dec.classifier)))
}

/// The skip decoder: the low-level features reduced (1×1×1 conv + BN → ReLU), concatenated with the
/// ASPP output resized to their grid, two 3×3×3 conv (+BN) → ReLU, classifier. `grids`: the ASPP
/// output's and the low-level features' sizes, where the graph's inputs fix them.
fn emit_skip_decoder(
    g: &mut GraphBuilder,
    x: &str,
    low: LowLevel,
    dec: &SkipDecoder,
    grids: Option<([usize; 3], [usize; 3])>,
) -> Result<String> {
    let fused = grids.filter(|_| g.layout() == Conv3dLayout::DepthTaps && same_size(&dec.conv1.conv));
    let c = match (low, fused) {
        (LowLevel::Features(low), Some((from, to))) => {
            let skip = emit_skip_part(g, low, dec)?;
            conv_of_resized_concat(g, "decoder.conv1", (x, from, to), &skip, dec)?
        }
        (LowLevel::SkipPart(skip), Some((from, to))) => {
            conv_of_resized_concat(g, "decoder.conv1", (x, from, to), skip, dec)?
        }
        (LowLevel::Features(low), None) => {
            let r = conv_bn(g, "decoder.reduce", low, &dec.reduce)?;
            let r = g.relu("decoder.reduce.relu", &r);
            let up = g.resize_trilinear_like("decoder.aspp_up", x, low);
            let cat = g.concat_channels("decoder.concat", &[&up, &r]);
            conv_bn(g, "decoder.conv1", &cat, &dec.conv1)?
        }
        (LowLevel::SkipPart(_), None) => {
            return Err(Error::Tensor {
                name: "decoder.conv1".into(),
                reason: "the head splits at the skip part only in the depth-taps layout, with fixed sizes and a \
                         same-size first convolution"
                    .into(),
            })
        }
    };
    let c = g.relu("decoder.conv1.relu", &c);
    let c = conv_bn(g, "decoder.conv2", &c, &dec.conv2)?;
    let c = g.relu("decoder.conv2.relu", &c);
    let (dims, w, b) = folded(&dec.classifier, None, "decoder.classifier")?;
    Ok(g.conv("decoder.classifier", &c, (&dims, &w), &b, attrs(&dec.classifier)))
}

/// Whether [`emit_head`] can take [`LowLevel::SkipPart`] in `layout`: the skip decoder, written with
/// depth taps, whose first convolution keeps the size (the split is that of
/// `conv_of_resized_concat`).
pub fn head_splits(net: &DeepLab3d, layout: Conv3dLayout) -> bool {
    matches!(&net.decoder, DecoderNet::Skip(dec) if layout == Conv3dLayout::DepthTaps && same_size(&dec.conv1.conv))
}

/// Channels of [`emit_skip_part`]'s output: the skip decoder's first convolution's (None for the
/// paper's decoder).
pub fn skip_part_channels(net: &DeepLab3d) -> Option<usize> {
    match &net.decoder {
        DecoderNet::Skip(dec) => Some(dec.conv1.conv.weight().dims()[0]),
        DecoderNet::Paper(_) => None,
    }
}

/// The part of the skip decoder's first convolution (+ folded BN, its bias included) that reads
/// the reduced low-level features (reduce → ReLU) — the last channels of its concatenated input.
pub fn emit_skip_part(g: &mut GraphBuilder, low: &str, dec: &SkipDecoder) -> Result<String> {
    let name = "decoder.conv1";
    let r = conv_bn(g, "decoder.reduce", low, &dec.reduce)?;
    let r = g.relu("decoder.reduce.relu", &r);
    let r_channels = dec.reduce.conv.weight().dims()[0];
    let (dims, w, bias) = folded(&dec.conv1.conv, Some(&dec.conv1.bn), name)?;
    let (co, ci, k) = (dims[0], dims[1], [dims[2], dims[3], dims[4]]);
    let taps = k.iter().product::<usize>();
    let ca = ci.checked_sub(r_channels).ok_or_else(|| Error::Tensor {
        name: name.into(),
        reason: format!("{ci} input channels cannot hold {r_channels} low-level ones"),
    })?;
    let wr: Vec<f32> = (0..co).flat_map(|o| w[(o * ci + ca) * taps..(o + 1) * ci * taps].iter().copied()).collect();
    Ok(g.conv(&format!("{name}.skip"), &r, (&[co, r_channels, k[0], k[1], k[2]], &wr), &bias, attrs(&dec.conv1.conv)))
}

/// Stride 1 and same padding on every axis: the output has the input's size.
fn same_size(conv: &Conv3d) -> bool {
    let a = attrs(conv);
    (0..3).all(|i| a.stride[i] == 1 && 2 * a.padding[i] == a.dilation[i] * (a.kernel[i] - 1))
}

/// conv + folded BN of `concat(resize(a, to), r)` without the resized tensor or the concatenation,
/// given `skip`, the part that reads `r` ([`emit_skip_part`]; the convolution is linear in its input
/// channels). Why: both steps are linear, so the resized part equals the kernel's taps applied to `a`
/// on its own small grid (a 1×1×1 convolution to `Co·taps` channels), then one matrix product per
/// axis that interpolates and shifts each tap into place (`taps_of_resized`). On the demo's tiles
/// the 64 ASPP channels are resized from 8×3×3 to 8×24×24 before a 76→16 3×3×3 convolution: 10.2 ms
/// of convolution, 3.6 of `Resize` and 1.0 of `Concat` per 4 tiles become well under 2 ms, and only
/// the 12 low-level channels still go through a 3×3×3 convolution at 8×24×24. Exact up to rounding.
fn conv_of_resized_concat(
    g: &mut GraphBuilder,
    name: &str,
    (a, from, to): (&str, [usize; 3], [usize; 3]),
    skip: &str,
    dec: &SkipDecoder,
) -> Result<String> {
    let unit = &dec.conv1;
    let (dims, w, _) = folded(&unit.conv, Some(&unit.bn), name)?;
    let at = attrs(&unit.conv);
    let (co, ci, k) = (dims[0], dims[1], [dims[2], dims[3], dims[4]]);
    let taps = k.iter().product::<usize>();
    // The resized channels come first in the concatenation, the reduced low-level ones last.
    let r_channels = dec.reduce.conv.weight().dims()[0];
    let ca = ci.checked_sub(r_channels).ok_or_else(|| Error::Tensor {
        name: name.into(),
        reason: format!("{ci} input channels cannot hold {r_channels} low-level ones"),
    })?;
    // Channel (o, tap) of the 1×1×1 convolution is weight[o, c, tap] over the resized channels c.
    let wz: Vec<f32> = (0..co)
        .flat_map(|o| (0..taps).flat_map(move |t| (0..ca).map(move |c| (o, c, t))))
        .map(|(o, c, t)| w[(o * ci + c) * taps + t])
        .collect();
    let one = ConvAttrs { kernel: [1; 3], stride: [1; 3], padding: [0; 3], dilation: [1; 3] };
    let n = |s: &str| format!("{name}.{s}");
    let z = g.conv(&n("taps_of_resized"), a, (&[co * taps, ca, 1, 1, 1], &wz), &vec![0.0; co * taps], one);
    let ([kd, kh, kw], [d, h, wl], [d2, h2, w2]) = (k, from, to);
    let i = |v: usize| v as i64;
    let m = |axis: usize, n_in: usize, n_out: usize| {
        taps_of_resized(k[axis], at.padding[axis], at.dilation[axis], n_in, n_out)
    };
    let z = g.reshape(&n("per_tap"), &z, &[-1, i(co), i(kd), i(kh), i(kw), i(d), i(h), i(wl)]);
    // Depth: (kd, d) last, contracted to d2.
    let y = g.transpose(&n("depth_last"), &z, &[0, 1, 3, 4, 6, 7, 2, 5]);
    let y = g.reshape(&n("depth_taps"), &y, &[-1, i(co), i(kh), i(kw), i(h), i(wl), i(kd * d)]);
    let md = g.weight(&n("depth_weights"), &[kd * d, d2], &m(0, d, d2));
    let y = g.matmul(&n("depth"), &y, &md); // [N, co, kh, kw, h, wl, d2]
                                            // Width: (kw, wl) last, contracted to w2.
    let y = g.transpose(&n("width_last"), &y, &[0, 1, 2, 4, 6, 3, 5]);
    let y = g.reshape(&n("width_taps"), &y, &[-1, i(co), i(kh), i(h), i(d2), i(kw * wl)]);
    let mw = g.weight(&n("width_weights"), &[kw * wl, w2], &m(2, wl, w2));
    let y = g.matmul(&n("width"), &y, &mw); // [N, co, kh, h, d2, w2]
                                            // Height: (kh, h) second last, contracted to h2 from the left; the result is [N, co, d2, h2, w2].
    let y = g.transpose(&n("height_last"), &y, &[0, 1, 4, 2, 3, 5]);
    let y = g.reshape(&n("height_taps"), &y, &[-1, i(co), i(d2), i(kh * h), i(w2)]);
    let mh = g.weight(&n("height_weights"), &[h2, kh * h], &transposed(&m(1, h, h2), kh * h, h2));
    let resized_part = g.matmul(&n("height"), &mh, &y);
    Ok(g.add(name, &resized_part, skip))
}

/// `m` `[rows, cols]` transposed.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| m[r * cols + c])).collect()
}

/// The policy: ResNet-10 → global average pool → linear → sigmoid.
pub fn emit_policy(g: &mut GraphBuilder, x: &str, policy: &PolicyNet) -> Result<String> {
    let mut h = stem_like(g, "policy.stem", x, &policy.stem)?;
    for b in &policy.blocks {
        h = emit_block(g, &format!("policy.{}", b.spec().name()), &h, b)?;
    }
    let p = g.global_avg_pool("policy.gap", &h);
    let f = g.flatten("policy.flatten", &p);
    let w = &policy.fc.weight();
    let dims = w.dims().to_vec();
    let bias = policy.fc.bias().map(|b| values(b, "policy.fc")).transpose()?.unwrap_or_else(|| vec![0.0; dims[0]]);
    let l = g.linear("policy.fc", &f, (&dims, &values(w, "policy.fc")?), &bias);
    Ok(g.sigmoid("policy.sigmoid", &l))
}

/// `[N, C, D, H, W]` with symbolic batch and spatial axes.
pub fn symbolic(channels: usize) -> Vec<Dim> {
    vec![
        Dim::Symbolic(autopath_bundle::names::BATCH),
        Dim::Fixed(channels),
        Dim::Symbolic("depth"),
        Dim::Symbolic("height"),
        Dim::Symbolic("width"),
    ]
}

/// `[N, C, D, H, W]` with a symbolic batch and fixed spatial size.
pub fn fixed(channels: usize, size: [usize; 3]) -> Vec<Dim> {
    vec![
        Dim::Symbolic(autopath_bundle::names::BATCH),
        Dim::Fixed(channels),
        Dim::Fixed(size[0]),
        Dim::Fixed(size[1]),
        Dim::Fixed(size[2]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linear resizing with corners aligned, written out directly (the definition, in f64).
    fn resize(x: &[f64], n_out: usize) -> Vec<f64> {
        let n_in = x.len();
        (0..n_out)
            .map(|o| {
                let s = if n_out > 1 { o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64 } else { 0.0 };
                let lo = (s.floor() as usize).min(n_in - 1);
                let hi = (lo + 1).min(n_in - 1);
                x[lo] * (1.0 - (s - lo as f64)) + x[hi] * (s - lo as f64)
            })
            .collect()
    }

    /// A 1-D convolution with zero padding `pad`, stride 1, dilation `dil`.
    fn conv(x: &[f64], kernel: &[f64], pad: usize, dil: usize) -> Vec<f64> {
        (0..x.len())
            .map(|o| {
                kernel
                    .iter()
                    .enumerate()
                    .filter_map(|(t, k)| (o + t * dil).checked_sub(pad).and_then(|i| x.get(i)).map(|v| k * v))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn tap_matrices_equal_a_convolution_of_the_resized_signal() {
        for (n_in, n_out, k, pad, dil) in
            [(3, 24, 3, 1, 1), (8, 8, 3, 1, 1), (5, 17, 3, 2, 2), (4, 9, 5, 2, 1), (1, 6, 3, 1, 1)]
        {
            let x: Vec<f64> = (0..n_in).map(|i| ((i * 7 + 3) as f64 * 0.61).sin()).collect();
            let kernel: Vec<f64> = (0..k).map(|t| 0.3 + 0.5 * t as f64 - 0.2 * (t * t) as f64).collect();
            let want = conv(&resize(&x, n_out), &kernel, pad, dil);
            // Σ_t kernel[t] · (x · M_t), M_t the tap's [n_in, n_out] block.
            let m = taps_of_resized(k, pad, dil, n_in, n_out);
            for (o, want) in want.iter().enumerate() {
                let got: f64 = (0..k)
                    .flat_map(|t| (0..n_in).map(move |i| (t, i)))
                    .map(|(t, i)| kernel[t] * x[i] * m[(t * n_in + i) * n_out + o] as f64)
                    .sum();
                assert!((got - want).abs() < 1e-6, "{n_in}→{n_out} k{k} p{pad} d{dil}, output {o}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn interpolation_matrices_resize_along_either_side() {
        let x: Vec<f64> = (0..5).map(|i| (i as f64 * 1.3).cos()).collect();
        let want = resize(&x, 13);
        let (right, left) = (interpolation(5, 13, false), interpolation(5, 13, true));
        for (o, want) in want.iter().enumerate() {
            let by_right: f64 = (0..5).map(|i| x[i] * right[i * 13 + o] as f64).sum();
            let by_left: f64 = (0..5).map(|i| left[o * 5 + i] as f64 * x[i]).sum();
            assert!((by_right - want).abs() < 1e-6 && (by_left - want).abs() < 1e-6, "output {o}");
        }
        assert_eq!(transposed(&right, 5, 13), left);
    }
}
