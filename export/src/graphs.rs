//! From trained Candle modules to ONNX graphs: BatchNorm folded into the preceding convolution, one
//! emitter per segment (stem, block, shortcut, head, policy) so that `full.onnx` is built from the
//! very same emitters as the per-block graphs.

use autopath_models::block::{Block, ConvBn};
use autopath_models::deeplab::{Decoder, DecoderNet, DeepLab3d, SkipDecoder, STEM_POOL};
use autopath_models::layers::{BatchNorm3d, Conv3d};
use autopath_models::policy::PolicyNet;
use autopath_models::spec::Output;
use candle_core::{DType, Tensor};

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

/// The stem: conv 7³ s2 (+BN) → ReLU → max-pool 3 s2.
pub fn emit_stem(g: &mut GraphBuilder, x: &str, net: &DeepLab3d) -> Result<String> {
    stem_like(g, "stem", x, &net.stem)
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

/// ASPP + decoder + trilinear upsampling to `tile` + sigmoid/softmax. `low` names the low-level
/// features (the output after the last block of stage 0), which the skip decoder reads.
pub fn emit_head(
    g: &mut GraphBuilder,
    x: &str,
    low: Option<&str>,
    net: &DeepLab3d,
    tile: [usize; 3],
) -> Result<String> {
    let feature = net.spec().cost(tile).blocks.last().map(|b| [b.output[1], b.output[2], b.output[3]]);
    let aspp = emit_aspp(g, x, net, feature)?;
    let logits = match &net.decoder {
        DecoderNet::Paper(dec) => emit_paper_decoder(g, &aspp, dec)?,
        DecoderNet::Skip(dec) => {
            let low = low.ok_or_else(|| Error::Tensor {
                name: "decoder".into(),
                reason: "the skip decoder needs the low-level features as a second input".into(),
            })?;
            emit_skip_decoder(g, &aspp, low, dec)?
        }
    };
    let resized = g.resize_trilinear("upsample", &logits, tile);
    Ok(match net.spec().output {
        Output::Sigmoid => g.sigmoid("probabilities", &resized),
        Output::Softmax { .. } => g.softmax_channels("probabilities", &resized),
    })
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
/// ASPP output resized to their grid, two 3×3×3 conv (+BN) → ReLU, classifier.
fn emit_skip_decoder(g: &mut GraphBuilder, x: &str, low: &str, dec: &SkipDecoder) -> Result<String> {
    let r = conv_bn(g, "decoder.reduce", low, &dec.reduce)?;
    let r = g.relu("decoder.reduce.relu", &r);
    let up = g.resize_trilinear_like("decoder.aspp_up", x, low);
    let cat = g.concat_channels("decoder.concat", &[&up, &r]);
    let c = conv_bn(g, "decoder.conv1", &cat, &dec.conv1)?;
    let c = g.relu("decoder.conv1.relu", &c);
    let c = conv_bn(g, "decoder.conv2", &c, &dec.conv2)?;
    let c = g.relu("decoder.conv2.relu", &c);
    let (dims, w, b) = folded(&dec.classifier, None, "decoder.classifier")?;
    Ok(g.conv("decoder.classifier", &c, (&dims, &w), &b, attrs(&dec.classifier)))
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
        Dim::Symbolic("batch"),
        Dim::Fixed(channels),
        Dim::Symbolic("depth"),
        Dim::Symbolic("height"),
        Dim::Symbolic("width"),
    ]
}

/// `[N, C, D, H, W]` with a symbolic batch and fixed spatial size.
pub fn fixed(channels: usize, size: [usize; 3]) -> Vec<Dim> {
    vec![Dim::Symbolic("batch"), Dim::Fixed(channels), Dim::Fixed(size[0]), Dim::Fixed(size[1]), Dim::Fixed(size[2])]
}
