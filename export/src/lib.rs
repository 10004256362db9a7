//! The AutoPath compiler: trained Candle modules → ONNX graphs, one per segment (stem, each block,
//! each projection shortcut, head, policy) plus the whole network as one graph.
#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod architecture;
pub mod builder;
pub mod graphs;
pub use autopath_onnx::pb;
pub mod precision;

pub use architecture::architecture;
pub use precision::with_precision;

use autopath_bundle::names;
use autopath_models::deeplab::DeepLab3d;
use autopath_models::policy::PolicyNet;
use prost::Message;

use autopath_bundle::{Conv3dLayout, StemForm};
use autopath_models::deeplab::DecoderNet;
use builder::{Dim, GraphBuilder};
use graphs::{
    emit_block, emit_head, emit_policy, emit_shortcut, emit_skip_part, emit_stem, fixed, head_splits,
    skip_part_channels, symbolic, LowLevel,
};
use pb::{ModelProto, OperatorSetIdProto, StringStringEntryProto};

/// ONNX opset of every graph (Resize with `sizes`, opset-13+ semantics).
pub const OPSET: i64 = 17;
/// IR version: accepted by ONNX Runtime 1.31 and the `onnx` 1.23 checker.
pub const IR_VERSION: i64 = 8;

/// Compiler errors, naming the tensor or graph at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight could not be read from the model.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// Weight name.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result with the compiler's error.
pub type Result<T> = std::result::Result<T, Error>;

/// A serialised ONNX model with its file name in the bundle.
#[derive(Debug, Clone)]
pub struct GraphFile {
    /// `stem.onnx`, `block_03.onnx`…
    pub file: String,
    /// What the graph computes.
    pub role: String,
    /// Serialised `ModelProto`.
    pub bytes: Vec<u8>,
}

fn model(graph: pb::GraphProto, doc: &str, producer_version: &str) -> Vec<u8> {
    ModelProto {
        ir_version: IR_VERSION,
        producer_name: "autopath".into(),
        producer_version: producer_version.into(),
        domain: "org.autopath".into(),
        model_version: 1,
        doc_string: doc.into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: vec![StringStringEntryProto { key: "autopath.role".into(), value: doc.into() }],
    }
    .encode_to_vec()
}

/// Every graph of a bundle for a segmenter (and optionally a policy), for tiles of size `tile`.
///
/// Inputs and outputs: `image` `[N, 1, D, H, W]` → stem → `features`; each block maps `x` → `y`;
/// the head maps `x` (and, with the skip decoder, [`names::LOW`]) → `probabilities` `[N, K, tile]`; `full.onnx` maps `image` → `probabilities`;
/// the policy maps `volume` `[N, 1, d, h, w]` → `keep` `[N, blocks]`.
pub fn compile(
    net: &DeepLab3d,
    policy: Option<&PolicyNet>,
    tile: [usize; 3],
    version: &str,
    (layout, stem): (Conv3dLayout, StemForm),
) -> Result<Vec<GraphFile>> {
    let spec = net.spec();
    let mut files = Vec::new();
    let mut push = |file: String, role: &str, g: GraphBuilder| {
        files.push(GraphFile { bytes: model(g.finish(), role, version), file, role: role.into() })
    };

    let mut g = GraphBuilder::new("stem", "stem: conv 7x7x7 s2 + BN + ReLU + max-pool 3 s2")
        .with_layout(layout)
        .with_stem(stem);
    let x = g.input(names::IMAGE, &symbolic(spec.in_channels));
    let y = emit_stem(&mut g, &x, net)?;
    let y = g.identity(names::FEATURES, &y);
    g.output(&y, &symbolic(spec.width));
    push(names::STEM_FILE.into(), "stem", g);

    for (n, block) in net.blocks.iter().enumerate() {
        let b = block.spec();
        let prefix = b.name();
        let mut g = GraphBuilder::new(&prefix, &format!("block {n} ({prefix}), kept: relu(shortcut(x) + F(x))"))
            .with_layout(layout);
        let x = g.input(names::X, &symbolic(b.in_channels));
        let y = emit_block(&mut g, &prefix, &x, block)?;
        let y = g.identity(names::Y, &y);
        g.output(&y, &symbolic(b.out_channels));
        push(names::block_file(n), &format!("block {n}"), g);
        if block.shortcut.is_some() {
            let mut g = GraphBuilder::new(
                &format!("{prefix}.shortcut"),
                &format!("block {n} ({prefix}), dropped: projection shortcut only"),
            )
            .with_layout(layout);
            let x = g.input(names::X, &symbolic(b.in_channels));
            let y = emit_shortcut(&mut g, &prefix, &x, block)?;
            let y = g.identity(names::Y, &y);
            g.output(&y, &symbolic(b.out_channels));
            push(names::shortcut_file(n), &format!("shortcut {n}"), g);
        }
    }

    push(names::HEAD_FILE.into(), "head", head_graph(net, tile, layout)?);

    let mut g = GraphBuilder::new("full", "full network: stem + every block + head, the baseline and parity reference")
        .with_layout(layout)
        .with_stem(stem);
    let mut h = g.input(names::IMAGE, &fixed(spec.in_channels, tile));
    h = emit_stem(&mut g, &h, net)?;
    let mut low = None;
    for (n, block) in net.blocks.iter().enumerate() {
        h = emit_block(&mut g, &block.spec().name(), &h, block)?;
        if spec.low_level_block() == Some(n) {
            low = Some(h.clone());
        }
    }
    let y = emit_head(&mut g, &h, low.as_deref().map(LowLevel::Features), net, tile)?;
    let y = g.identity(names::PROBABILITIES, &y);
    g.output(&y, &fixed(spec.output.channels(), tile));
    push(names::FULL_FILE.into(), "full", g);

    if let Some(p) = policy {
        let mut g =
            GraphBuilder::new("policy", "policy: ResNet-10 on the downsampled volume -> keep probability per block")
                .with_layout(layout);
        let x = g.input(names::VOLUME, &fixed(spec.in_channels, spec.policy.input));
        let y = emit_policy(&mut g, &x, p)?;
        let y = g.identity(names::KEEP, &y);
        g.output(&y, &[Dim::Symbolic("batch"), Dim::Fixed(spec.num_blocks())]);
        push(names::POLICY_FILE.into(), "policy", g);
    }
    Ok(files)
}

/// One whole path as one graph, `image` → `probabilities` like `full.onnx`: the stem; per block, the
/// block where `keep` keeps it, its projection shortcut where it is dropped and has one, nothing where
/// it is dropped with an identity shortcut; the head (with the skip decoder, fed the value after the
/// low-level block, as the chain feeds it). The chain of block graphs computes the same on the same
/// path; as one graph the runtime calls one session instead of one per block.
pub fn path_graph(
    net: &DeepLab3d,
    keep: &[bool],
    tile: [usize; 3],
    version: &str,
    (layout, stem): (Conv3dLayout, StemForm),
) -> Result<GraphFile> {
    let spec = net.spec();
    let mask: String = keep.iter().map(|&k| if k { '1' } else { '0' }).collect();
    let mut g =
        GraphBuilder::new(&format!("path_{mask}"), &format!("one path of the network: blocks {mask} (1 = kept)"))
            .with_layout(layout)
            .with_stem(stem);
    let mut h = g.input(names::IMAGE, &fixed(spec.in_channels, tile));
    h = emit_stem(&mut g, &h, net)?;
    let mut low = None;
    for (n, (block, &k)) in net.blocks.iter().zip(keep).enumerate() {
        let prefix = block.spec().name();
        if k {
            h = emit_block(&mut g, &prefix, &h, block)?;
        } else if block.shortcut.is_some() {
            h = emit_shortcut(&mut g, &prefix, &h, block)?;
        }
        if spec.low_level_block() == Some(n) {
            low = Some(h.clone());
        }
    }
    let y = emit_head(&mut g, &h, low.as_deref().map(LowLevel::Features), net, tile)?;
    let y = g.identity(names::PROBABILITIES, &y);
    g.output(&y, &fixed(spec.output.channels(), tile));
    Ok(GraphFile { bytes: model(g.finish(), "path", version), file: names::path_file(&mask), role: "path".into() })
}

/// The head's graph, its inputs fixed to the tile's sizes: the head resizes to the tile, and its ASPP
/// drops the taps that only read padding at these sizes (`graphs::conv_bn_live_taps`).
fn head_graph(net: &DeepLab3d, tile: [usize; 3], layout: Conv3dLayout) -> Result<GraphBuilder> {
    let spec = net.spec();
    let mut g = GraphBuilder::new("head", "head: ASPP + decoder + trilinear upsampling to the tile + sigmoid/softmax")
        .with_layout(layout);
    let cost = spec.cost(tile);
    let at = |n: usize| cost.blocks.get(n).map(|b| [b.output[1], b.output[2], b.output[3]]);
    let feature = at(cost.blocks.len().wrapping_sub(1)).ok_or_else(|| Error::Tensor {
        name: "head".into(),
        reason: "a network without blocks has no head input".into(),
    })?;
    let x = g.input(names::X, &fixed(spec.backbone_channels(), feature));
    let low = spec
        .low_level_block()
        .and_then(|n| at(n).map(|size| g.input(names::LOW, &fixed(spec.low_level_channels(), size))));
    let y = emit_head(&mut g, &x, low.as_deref().map(LowLevel::Features), net, tile)?;
    let y = g.identity(names::PROBABILITIES, &y);
    g.output(&y, &fixed(spec.output.channels(), tile));
    Ok(g)
}

/// The head in two graphs, for evaluating many paths on one volume: `head_low.onnx` maps the
/// low-level features [`names::LOW`] to [`names::SKIP`], the part of the skip decoder that reads
/// nothing else; `head_rest.onnx` maps `x` and [`names::SKIP`] to `probabilities`, as `head.onnx` maps
/// `x` and the features. The low-level features depend only on the blocks of stage 0, so all paths
/// that agree on those share one skip part: an r18's 256 paths need 4. On the CPU the skip part is a
/// third of the head's time (4.5 of 13.5 ms per 4 demo tiles on one thread). None where the head does
/// not split ([`graphs::head_splits`]).
pub fn split_head(
    net: &DeepLab3d,
    tile: [usize; 3],
    version: &str,
    layout: Conv3dLayout,
) -> Result<Option<[GraphFile; 2]>> {
    let (DecoderNet::Skip(dec), true) = (&net.decoder, head_splits(net, layout)) else { return Ok(None) };
    let spec = net.spec();
    let cost = spec.cost(tile);
    let at = |n: usize| cost.blocks.get(n).map(|b| [b.output[1], b.output[2], b.output[3]]);
    let (Some(grid), Some(feature), Some(channels)) =
        (spec.low_level_block().and_then(at), at(cost.blocks.len().wrapping_sub(1)), skip_part_channels(net))
    else {
        return Ok(None);
    };
    let file = |g: GraphBuilder, file: &str, role: &str| GraphFile {
        bytes: model(g.finish(), role, version),
        file: file.into(),
        role: role.into(),
    };

    let role = "head, low-level part: the skip decoder's reduce + ReLU + first convolution over those channels";
    let mut g = GraphBuilder::new("head_low", role).with_layout(layout);
    let low = g.input(names::LOW, &fixed(spec.low_level_channels(), grid));
    let y = emit_skip_part(&mut g, &low, dec)?;
    let y = g.identity(names::SKIP, &y);
    g.output(&y, &fixed(channels, grid));
    let low_graph = file(g, names::HEAD_LOW_FILE, "head low-level part");

    let role = "head after the low-level part: ASPP + the rest of the decoder + upsampling + activation";
    let mut g = GraphBuilder::new("head_rest", role).with_layout(layout);
    let x = g.input(names::X, &fixed(spec.backbone_channels(), feature));
    let skip = g.input(names::SKIP, &fixed(channels, grid));
    let y = emit_head(&mut g, &x, Some(LowLevel::SkipPart(&skip)), net, tile)?;
    let y = g.identity(names::PROBABILITIES, &y);
    g.output(&y, &fixed(spec.output.channels(), tile));
    Ok(Some([low_graph, file(g, names::HEAD_REST_FILE, "head after the low-level part")]))
}
