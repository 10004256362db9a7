//! Architecture specifications: presets, the block table, tensor shapes and FLOPs for a given input.
//!
//! FLOPs count multiply–adds as two operations, for convolutions and linear layers (BatchNorm is
//! folded into convolutions at export; ReLU, adds and pooling are memory-bound and not counted). The
//! counts are nominal: dilated taps that fall into padding are counted, since the runtime computes
//! them too.

pub use autopath_bundle::PathCost;
use serde::{Deserialize, Serialize};

/// Residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3×3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1×1, 3×3×3, 1×1×1 with expansion 4 (ResNet-50).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit of the stage width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Output activation of the segmenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// One foreground channel with sigmoid (labels merged: > 0).
    Sigmoid,
    /// `classes` channels with softmax.
    Softmax {
        /// Number of classes, background included.
        classes: usize,
    },
}

impl Output {
    /// Channels the network produces.
    pub fn channels(self) -> usize {
        match self {
            Output::Sigmoid => 1,
            Output::Softmax { classes } => classes,
        }
    }
}

/// Which decoder follows the ASPP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderKind {
    /// The paper's (Med3D style): ConvTranspose ×2 → 3×3×3 conv → classifier, then trilinear upsampling
    /// from output stride 4 (z) × 32 × 32 (y, x) to the tile.
    #[default]
    Paper,
    /// DeepLabV3+'s low-level skip: the output after the last block of stage 0 (stride 4 in every axis)
    /// → 1×1×1 conv → BN → ReLU, concatenated with the ASPP output resized (trilinear) to its grid,
    /// → two 3×3×3 conv → BN → ReLU → 1×1×1 classifier, then trilinear upsampling to the tile.
    Skip,
}

/// The policy network: a ResNet-10 on a fixed-size downsampled copy of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// Base width (64 in the reference).
    pub width: usize,
    /// Input size `[D, H, W]` (reference: 24×128×128, the 48×256×256 patch average-pooled by 2).
    pub input: [usize; 3],
}

/// A segmenter architecture: 3D DeepLab V3 on a 3D ResNet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Preset name (`r18`, `r50`).
    pub name: String,
    /// Residual block type.
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Width of the first stage (64 in the reference; stages double it).
    pub width: usize,
    /// Input channels (1 for CT).
    pub in_channels: usize,
    /// Output activation.
    pub output: Output,
    /// Training / validation tile size `[D, H, W]`.
    pub patch: [usize; 3],
    /// ASPP dilation rates of the three 3×3×3 branches.
    pub aspp_rates: [usize; 3],
    /// The policy network.
    pub policy: PolicySpec,
    /// The decoder (specs from before the choice existed have the paper's).
    #[serde(default)]
    pub decoder: DecoderKind,
}

/// One residual block of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// Stage index 0..4.
    pub stage: usize,
    /// Index within the stage.
    pub index: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Stage width (middle channels of a bottleneck).
    pub planes: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Stride `(1, s, s)`: never along z.
    pub stride: [usize; 3],
    /// Whether the shortcut is a 1×1×1 convolution + BN (else identity).
    pub projection: bool,
}

impl BlockSpec {
    /// Weight-naming prefix shared by checkpoints and exported graphs: `stage2.block1`.
    pub fn name(&self) -> String {
        format!("stage{}.block{}", self.stage + 1, self.index)
    }
}

/// Shapes and cost of one block for a given input size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockCost {
    /// Input `[C, D, H, W]` (per sample).
    pub input: [usize; 4],
    /// Output `[C, D, H, W]`.
    pub output: [usize; 4],
    /// FLOPs of the residual branch: what dropping the block saves.
    pub branch_flops: u64,
    /// FLOPs of the projection shortcut (0 for identity): paid whether kept or dropped.
    pub shortcut_flops: u64,
}

/// Cost of a whole network for one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkCost {
    /// Stem output `[C, D, H, W]`.
    pub stem_output: [usize; 4],
    /// Stem FLOPs.
    pub stem_flops: u64,
    /// Per block.
    pub blocks: Vec<BlockCost>,
    /// ASPP + decoder FLOPs.
    pub head_flops: u64,
}

impl PathCost for NetworkCost {
    fn stem_and_head_flops(&self) -> u64 {
        self.stem_flops + self.head_flops
    }

    fn block_flops(&self) -> Vec<(u64, u64)> {
        self.blocks.iter().map(|b| (b.branch_flops, b.shortcut_flops)).collect()
    }
}

fn conv_out(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p - k) / s + 1
}

impl ArchSpec {
    /// A preset (`r18`, `r50`) at a base width (64 = reference) and patch size.
    pub fn preset(name: &str, width: usize, patch: [usize; 3]) -> Option<ArchSpec> {
        let (block, layers) = match name {
            "r18" => (BlockKind::Basic, [2, 2, 2, 2]),
            "r34" => (BlockKind::Basic, [3, 4, 6, 3]),
            "r50" => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            _ => return None,
        };
        Some(ArchSpec {
            name: name.to_string(),
            block,
            layers,
            width,
            in_channels: 1,
            output: Output::Sigmoid,
            patch,
            aspp_rates: [6, 12, 18],
            policy: PolicySpec { width, input: patch.map(|v| v.div_ceil(2)) },
            decoder: DecoderKind::Paper,
        })
    }

    /// Number of droppable blocks N.
    pub fn num_blocks(&self) -> usize {
        self.layers.iter().sum()
    }

    /// ASPP branch width (256 at the reference width 64).
    pub fn aspp_channels(&self) -> usize {
        self.width * 4
    }

    /// Decoder width (32 at the reference width 64).
    pub fn decoder_channels(&self) -> usize {
        (self.width / 2).max(1)
    }

    /// The block whose output the skip decoder reads (the last of stage 0), if the decoder has a skip.
    pub fn low_level_block(&self) -> Option<usize> {
        match self.decoder {
            DecoderKind::Paper => None,
            DecoderKind::Skip => Some(self.layers[0].max(1) - 1),
        }
    }

    /// Channels of the low-level features (the stage-0 output).
    pub fn low_level_channels(&self) -> usize {
        self.width * self.block.expansion()
    }

    /// Channels the skip decoder reduces the low-level features to (48 at the reference width 64, as
    /// DeepLabV3+).
    pub fn skip_channels(&self) -> usize {
        (self.width * 3 / 4).max(1)
    }

    /// Width of the skip decoder's two 3×3×3 convolutions (64 at the reference width; DeepLabV3+'s 2D
    /// decoder uses 256, which in 3D at stride 4 would cost more than the backbone).
    pub fn skip_decoder_channels(&self) -> usize {
        self.width
    }

    /// Stage widths.
    pub fn stage_widths(&self) -> [usize; 4] {
        [self.width, self.width * 2, self.width * 4, self.width * 8]
    }

    /// Channels entering the ASPP.
    pub fn backbone_channels(&self) -> usize {
        self.stage_widths()[3] * self.block.expansion()
    }

    /// The block table, in dropping order (stage 1 block 0 first).
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        let mut in_ch = self.width;
        for (stage, (&n, &planes)) in self.layers.iter().zip(self.stage_widths().iter()).enumerate() {
            for index in 0..n {
                let s = if index == 0 && stage > 0 { 2 } else { 1 };
                let out_ch = planes * self.block.expansion();
                let stride = [1, s, s];
                out.push(BlockSpec {
                    stage,
                    index,
                    in_channels: in_ch,
                    planes,
                    out_channels: out_ch,
                    stride,
                    projection: s != 1 || in_ch != out_ch,
                });
                in_ch = out_ch;
            }
        }
        out
    }

    /// Stem output size for an input `[D, H, W]`: conv k7 s2 p3, then max-pool k3 s2 p1.
    pub fn stem_output(&self, input: [usize; 3]) -> [usize; 3] {
        input.map(|n| conv_out(conv_out(n, 7, 2, 3), 3, 2, 1))
    }

    /// Shapes and FLOPs for an input `[D, H, W]`.
    pub fn cost(&self, input: [usize; 3]) -> NetworkCost {
        let conv_pre_pool = input.map(|n| conv_out(n, 7, 2, 3));
        let vox = |s: [usize; 3]| s.iter().product::<usize>() as u64;
        let stem_flops = 2 * self.width as u64 * self.in_channels as u64 * 343 * vox(conv_pre_pool);
        let mut size = self.stem_output(input);
        let stem_output = [self.width, size[0], size[1], size[2]];
        let mut blocks = Vec::new();
        for b in self.blocks() {
            let out = [0, 1, 2].map(|a| conv_out(size[a], 1, b.stride[a], 0));
            let p = vox(out);
            let (ci, pl, co) = (b.in_channels as u64, b.planes as u64, b.out_channels as u64);
            let branch_flops = match self.block {
                BlockKind::Basic => 2 * p * (pl * ci * 27 + pl * pl * 27),
                // conv1 (1×1×1) runs at the input resolution; the stride is on the 3×3×3 conv.
                BlockKind::Bottleneck => 2 * (vox(size) * pl * ci + p * pl * pl * 27 + p * co * pl),
            };
            let shortcut_flops = if b.projection { 2 * p * co * ci } else { 0 };
            blocks.push(BlockCost {
                input: [b.in_channels, size[0], size[1], size[2]],
                output: [b.out_channels, out[0], out[1], out[2]],
                branch_flops,
                shortcut_flops,
            });
            size = out;
        }
        let (c4, a, dec, k) = (
            self.backbone_channels() as u64,
            self.aspp_channels() as u64,
            self.decoder_channels() as u64,
            self.output.channels() as u64,
        );
        let p4 = vox(size);
        let aspp = 2 * p4 * a * c4 * (1 + 27 * 3) + 2 * a * c4 + 2 * p4 * a * 5 * a;
        let decoder = match self.decoder {
            DecoderKind::Paper => {
                let up = size.map(|n| n * 2);
                // ConvTranspose k2 s2: each output voxel gets one tap per input channel.
                2 * vox(up) * (dec * a + dec * dec * 27 + k * dec)
            }
            DecoderKind::Skip => {
                // At the low-level grid: the 1×1×1 reduction, two 3×3×3 convolutions, the classifier.
                let low = vox([stem_output[1], stem_output[2], stem_output[3]]);
                let (cl, s, c) = (
                    self.low_level_channels() as u64,
                    self.skip_channels() as u64,
                    self.skip_decoder_channels() as u64,
                );
                2 * low * (s * cl + c * (a + s) * 27 + c * c * 27 + k * c)
            }
        };
        NetworkCost { stem_output, stem_flops, blocks, head_flops: aspp + decoder }
    }

    /// Trainable parameters (convolutions, BatchNorm affine, biases), as PyTorch counts them.
    pub fn parameter_count(&self) -> u64 {
        let bn = |c: usize| 2 * c as u64;
        let conv = |o: usize, i: usize, k: u64| (o * i) as u64 * k;
        let mut n = conv(self.width, self.in_channels, 343) + bn(self.width);
        for b in self.blocks() {
            n += match self.block {
                BlockKind::Basic => conv(b.planes, b.in_channels, 27) + conv(b.planes, b.planes, 27) + 2 * bn(b.planes),
                BlockKind::Bottleneck => {
                    conv(b.planes, b.in_channels, 1)
                        + conv(b.planes, b.planes, 27)
                        + conv(b.out_channels, b.planes, 1)
                        + 2 * bn(b.planes)
                        + bn(b.out_channels)
                }
            };
            if b.projection {
                n += conv(b.out_channels, b.in_channels, 1) + bn(b.out_channels);
            }
        }
        let (c4, a, dec, k) =
            (self.backbone_channels(), self.aspp_channels(), self.decoder_channels(), self.output.channels());
        n += conv(a, c4, 1) + 3 * conv(a, c4, 27) + conv(a, c4, 1) + 5 * bn(a); // four branches + image pooling
        n += conv(a, 5 * a, 1) + bn(a); // projection
        n += match self.decoder {
            DecoderKind::Paper => conv(dec, a, 8) + bn(dec) + conv(dec, dec, 27) + bn(dec),
            DecoderKind::Skip => {
                let (cl, s, c) = (self.low_level_channels(), self.skip_channels(), self.skip_decoder_channels());
                conv(s, cl, 1) + bn(s) + conv(c, a + s, 27) + bn(c) + conv(c, c, 27) + bn(c)
            }
        };
        let last = match self.decoder {
            DecoderKind::Paper => dec,
            DecoderKind::Skip => self.skip_decoder_channels(),
        };
        n + conv(k, last, 1) + k as u64
    }
}
