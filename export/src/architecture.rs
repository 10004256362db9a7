//! The manifest's architecture section for the graphs [`crate::compile`] writes: every block's files,
//! shapes and FLOPs at the tile size, and the skip decoder's low-level input.

use autopath_bundle::{names, Architecture, BlockEntry, BlockKind, Decoder, LowLevel, SplitHead};
use autopath_models::deeplab::DeepLab3d;
use autopath_models::spec;

/// The architecture of `net` at tiles of `tile`, with the split head's files when `split_head`.
pub fn architecture(net: &DeepLab3d, tile: [usize; 3], split_head: bool) -> Architecture {
    let spec = net.spec();
    let cost = spec.cost(tile);
    let blocks = spec
        .blocks()
        .iter()
        .zip(&cost.blocks)
        .enumerate()
        .map(|(n, (b, c))| BlockEntry {
            index: n,
            name: b.name(),
            file: names::block_file(n),
            shortcut_file: b.projection.then(|| names::shortcut_file(n)),
            input: c.input,
            output: c.output,
            branch_flops: c.branch_flops,
            shortcut_flops: c.shortcut_flops,
        })
        .collect();
    Architecture {
        name: spec.name.clone(),
        block: match spec.block {
            spec::BlockKind::Basic => BlockKind::Basic,
            spec::BlockKind::Bottleneck => BlockKind::Bottleneck,
        },
        width: spec.width,
        parameters: spec.parameter_count(),
        stem_file: names::STEM_FILE.into(),
        stem_flops: cost.stem_flops,
        stem_output: cost.stem_output,
        blocks,
        head_file: names::HEAD_FILE.into(),
        decoder: match spec.decoder {
            spec::DecoderKind::Paper => Decoder::Paper,
            spec::DecoderKind::Skip => Decoder::Skip,
        },
        low_level: spec.low_level_block().map(|n| LowLevel {
            after_block: n,
            input: names::LOW.into(),
            shape: cost.blocks[n].output,
            split: crate::graphs::skip_part_channels(net).filter(|_| split_head).map(|c| {
                let [_, d, h, w] = cost.blocks[n].output;
                SplitHead {
                    low_file: names::HEAD_LOW_FILE.into(),
                    rest_file: names::HEAD_REST_FILE.into(),
                    output: names::SKIP.into(),
                    shape: [c, d, h, w],
                }
            }),
        }),
        head_flops: cost.head_flops,
        full_file: names::FULL_FILE.into(),
    }
}
