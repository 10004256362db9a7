//! 3D DeepLab V3 on a 3D ResNet with droppable residual blocks.

use candle_core::{DType, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;

use crate::block::{Block, BlockKeep, ConvBn};
use crate::layers::{
    global_avg_pool, max_pool3d, resize_trilinear, BatchNorm3d, Buffers, Conv3d, ConvTranspose3d, Dropout,
    MaxPool3dParams,
};
use crate::ops::Conv3dParams;
use crate::spec::{ArchSpec, DecoderKind};

/// Which blocks run.
#[derive(Debug, Clone, Copy)]
pub enum BlockPath<'a> {
    /// Every block.
    Full,
    /// One keep mask for the whole batch (`true` = run); dropped branches are not computed.
    Shared(&'a [bool]),
    /// A keep mask per sample, `[B][N]`.
    PerSample(&'a [Vec<bool>]),
}

impl BlockPath<'_> {
    /// How block `n` runs for this batch. A per-sample mask shared by all samples is run as such
    /// (skipping or running the branch for the batch); only a mixed column needs masking.
    fn keep(&self, n: usize, like: &Tensor) -> Result<(BlockKeepOwned, bool)> {
        Ok(match self {
            BlockPath::Full => (BlockKeepOwned::All, true),
            BlockPath::Shared(k) => (if k[n] { BlockKeepOwned::All } else { BlockKeepOwned::None }, k[n]),
            BlockPath::PerSample(ks) => {
                let col: Vec<bool> = ks.iter().map(|k| k[n]).collect();
                if col.iter().all(|&k| k) {
                    (BlockKeepOwned::All, true)
                } else if col.iter().all(|&k| !k) {
                    (BlockKeepOwned::None, false)
                } else {
                    let m: Vec<f32> = col.iter().map(|&k| f32::from(u8::from(k))).collect();
                    (BlockKeepOwned::Mask(Tensor::new(m, like.device())?.to_dtype(like.dtype())?), true)
                }
            }
        })
    }
}

enum BlockKeepOwned {
    All,
    None,
    Mask(Tensor),
}

/// Atrous spatial pyramid pooling: 1×1×1, three dilated 3×3×3, and image pooling, concatenated and
/// projected.
#[derive(Debug, Clone)]
pub struct Aspp {
    /// The four convolutional branches (1×1×1, then dilations 6, 12, 18).
    pub branches: Vec<ConvBn>,
    /// Image pooling: GAP → 1×1×1 conv → BN → ReLU → broadcast.
    pub pooling: ConvBn,
    /// 1×1×1 projection of the concatenation.
    pub project: ConvBn,
    /// Dropout 0.5 after the projection (training only).
    pub dropout: Dropout,
}

impl Aspp {
    fn load(vb: VarBuilder, spec: &ArchSpec) -> Result<Self> {
        let (c, a) = (spec.backbone_channels(), spec.aspp_channels());
        let mut branches = vec![ConvBn::load(&vb, "b0.conv", "b0.bn", (c, a), 1, Conv3dParams::default())?];
        for (i, &r) in spec.aspp_rates.iter().enumerate() {
            let p = Conv3dParams { padding: [r; 3], dilation: [r; 3], ..Default::default() };
            branches.push(ConvBn::load(&vb, &format!("b{}.conv", i + 1), &format!("b{}.bn", i + 1), (c, a), 3, p)?);
        }
        let pooling = ConvBn::load(&vb, "pool.conv", "pool.bn", (c, a), 1, Conv3dParams::default())?;
        let project = ConvBn::load(&vb, "project.conv", "project.bn", (5 * a, a), 1, Conv3dParams::default())?;
        Ok(Aspp { branches, pooling, project, dropout: Dropout::new(0.5) })
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Aspp {
            branches: self.branches.iter().map(|u| u.to_dtype(dtype)).collect::<Result<_>>()?,
            pooling: self.pooling.to_dtype(dtype)?,
            project: self.project.to_dtype(dtype)?,
            dropout: self.dropout.clone(),
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, _, d, h, w) = x.dims5()?;
        let mut outs = Vec::with_capacity(5);
        for b in &self.branches {
            outs.push(b.forward_relu(x, train)?);
        }
        let pooled = self.pooling.forward_relu(&global_avg_pool(x)?, train)?;
        let a = pooled.dim(1)?;
        outs.push(pooled.broadcast_as((n, a, d, h, w))?.contiguous()?);
        let y = self.project.forward_relu(&Tensor::cat(&outs, 1)?, train)?;
        if train {
            self.dropout.forward(&y)
        } else {
            Ok(y)
        }
    }
}

/// The final 1×1×1 convolution with bias from `channels` to the classes, both decoders' last layer.
fn classifier(vb: &VarBuilder, channels: usize, spec: &ArchSpec) -> Result<Conv3d> {
    Conv3d::load(vb.pp("classifier"), channels, spec.output.channels(), [1; 3], Conv3dParams::default(), true)
}

/// ConvTranspose k2 s2 → BN → ReLU → 3×3×3 conv → BN → ReLU → 1×1×1 conv to the classes.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Upsampling by 2.
    pub up: ConvTranspose3d,
    /// BN after the upsampling.
    pub up_bn: BatchNorm3d,
    /// 3×3×3 conv + BN.
    pub conv: ConvBn,
    /// Final 1×1×1 conv with bias.
    pub classifier: Conv3d,
}

impl Decoder {
    fn load(vb: VarBuilder, spec: &ArchSpec) -> Result<Self> {
        let (a, c) = (spec.aspp_channels(), spec.decoder_channels());
        Ok(Decoder {
            up: ConvTranspose3d::load(vb.pp("up"), a, c)?,
            up_bn: BatchNorm3d::load(vb.pp("up_bn"), c)?,
            conv: ConvBn::load(&vb, "conv", "bn", (c, c), 3, Conv3dParams { padding: [1; 3], ..Default::default() })?,
            classifier: classifier(&vb, c, spec)?,
        })
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Decoder {
            up: self.up.to_dtype(dtype)?,
            up_bn: self.up_bn.to_dtype(dtype)?,
            conv: self.conv.to_dtype(dtype)?,
            classifier: self.classifier.to_dtype(dtype)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.up_bn.forward_relu(&self.up.forward(x)?, train)?;
        let h = self.conv.forward_relu(&h, train)?;
        self.classifier.forward(&h)
    }
}

/// The skip decoder (`DecoderKind::Skip`): low-level features → 1×1×1 conv → BN → ReLU, concatenated
/// with the ASPP output resized to their grid, → two 3×3×3 conv → BN → ReLU → 1×1×1 classifier.
#[derive(Debug, Clone)]
pub struct SkipDecoder {
    /// 1×1×1 reduction of the low-level features + BN.
    pub reduce: ConvBn,
    /// First 3×3×3 conv on the concatenation + BN.
    pub conv1: ConvBn,
    /// Second 3×3×3 conv + BN.
    pub conv2: ConvBn,
    /// Final 1×1×1 conv with bias.
    pub classifier: Conv3d,
}

impl SkipDecoder {
    fn load(vb: VarBuilder, spec: &ArchSpec) -> Result<Self> {
        let (a, l, s, c) =
            (spec.aspp_channels(), spec.low_level_channels(), spec.skip_channels(), spec.skip_decoder_channels());
        let pad = Conv3dParams { padding: [1; 3], ..Default::default() };
        Ok(SkipDecoder {
            reduce: ConvBn::load(&vb, "reduce.conv", "reduce.bn", (l, s), 1, Conv3dParams::default())?,
            conv1: ConvBn::load(&vb, "conv1.conv", "conv1.bn", (a + s, c), 3, pad)?,
            conv2: ConvBn::load(&vb, "conv2.conv", "conv2.bn", (c, c), 3, pad)?,
            classifier: classifier(&vb, c, spec)?,
        })
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(SkipDecoder {
            reduce: self.reduce.to_dtype(dtype)?,
            conv1: self.conv1.to_dtype(dtype)?,
            conv2: self.conv2.to_dtype(dtype)?,
            classifier: self.classifier.to_dtype(dtype)?,
        })
    }

    fn forward(&self, x: &Tensor, low: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, d, h, w) = low.dims5()?;
        let r = self.reduce.forward_relu(low, train)?;
        let up = resize_trilinear(x, [d, h, w])?;
        let y = self.conv1.forward_relu(&Tensor::cat(&[&up, &r], 1)?, train)?;
        let y = self.conv2.forward_relu(&y, train)?;
        self.classifier.forward(&y)
    }
}

/// The decoder after the ASPP.
#[derive(Debug, Clone)]
pub enum DecoderNet {
    /// The paper's (both boxed: the network holds one, and their sizes differ a lot).
    Paper(Box<Decoder>),
    /// With the low-level skip.
    Skip(Box<SkipDecoder>),
}

/// The segmenter.
#[derive(Debug, Clone)]
pub struct DeepLab3d {
    spec: ArchSpec,
    /// Stem conv 7×7×7 s2 + BN (then ReLU and max-pool).
    pub stem: ConvBn,
    /// The N droppable residual blocks, in order.
    pub blocks: Vec<Block>,
    /// ASPP on the last stage.
    pub aspp: Aspp,
    /// Decoder to class logits.
    pub decoder: DecoderNet,
}

/// Stem max-pool: kernel 3, stride 2, padding 1.
pub const STEM_POOL: MaxPool3dParams = MaxPool3dParams { kernel: [3; 3], stride: [2; 3], padding: [1; 3] };

impl DeepLab3d {
    /// Creates (fresh variables) or loads (checkpoint-backed `vb`) the network.
    pub fn load(vb: VarBuilder, spec: &ArchSpec) -> Result<Self> {
        let stem = ConvBn::load(
            &vb,
            "stem.conv",
            "stem.bn",
            (spec.in_channels, spec.width),
            7,
            Conv3dParams { stride: [2; 3], padding: [3; 3], dilation: [1; 3] },
        )?;
        let blocks = spec
            .blocks()
            .into_iter()
            .map(|b| Block::load(vb.pp(b.name()), b, spec.block))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeepLab3d {
            spec: spec.clone(),
            stem,
            blocks,
            aspp: Aspp::load(vb.pp("aspp"), spec)?,
            decoder: match spec.decoder {
                DecoderKind::Paper => DecoderNet::Paper(Box::new(Decoder::load(vb.pp("decoder"), spec)?)),
                DecoderKind::Skip => DecoderNet::Skip(Box::new(SkipDecoder::load(vb.pp("decoder"), spec)?)),
            },
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// Where the weights live: inputs must be created there.
    pub fn device(&self) -> &candle_core::Device {
        self.stem.conv.weight().device()
    }

    /// A copy in `dtype`: `compile` checks every exported graph against an f64 copy, so that f32
    /// rounding in Candle or ONNX Runtime cannot pass for an export error, nor hide one.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(DeepLab3d {
            spec: self.spec.clone(),
            stem: self.stem.to_dtype(dtype)?,
            blocks: self.blocks.iter().map(|b| b.to_dtype(dtype)).collect::<Result<_>>()?,
            aspp: self.aspp.to_dtype(dtype)?,
            decoder: match &self.decoder {
                DecoderNet::Paper(d) => DecoderNet::Paper(Box::new(d.to_dtype(dtype)?)),
                DecoderNet::Skip(d) => DecoderNet::Skip(Box::new(d.to_dtype(dtype)?)),
            },
        })
    }

    /// Stem: conv → BN → ReLU → max-pool.
    pub fn stem(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        max_pool3d(&self.stem.forward_relu(x, train)?, STEM_POOL)
    }

    /// Runs blocks `from..to` on the path.
    pub fn blocks(&self, x: &Tensor, path: BlockPath, from: usize, to: usize, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for n in from..to {
            let (keep, _) = path.keep(n, &h)?;
            let k = match &keep {
                BlockKeepOwned::All => BlockKeep::All,
                BlockKeepOwned::None => BlockKeep::None,
                BlockKeepOwned::Mask(m) => BlockKeep::Mask(m),
            };
            h = self.blocks[n].forward(&h, k, train)?;
        }
        Ok(h)
    }

    /// ASPP + decoder + trilinear upsampling to `size`: class logits. `low` is the output after
    /// [`ArchSpec::low_level_block`], which the skip decoder needs (and the paper's ignores).
    pub fn head(&self, x: &Tensor, low: Option<&Tensor>, size: [usize; 3], train: bool) -> Result<Tensor> {
        let a = self.aspp.forward(x, train)?;
        let y = match &self.decoder {
            DecoderNet::Paper(d) => d.forward(&a, train)?,
            DecoderNet::Skip(d) => {
                let low =
                    low.ok_or_else(|| candle_core::Error::Msg("the skip decoder needs the low-level features".into()))?;
                d.forward(&a, low, train)?
            }
        };
        resize_trilinear(&y, size)
    }

    /// Logits `[B, K, D, H, W]` for input `[B, 1, D, H, W]` on a path.
    pub fn forward(&self, x: &Tensor, path: BlockPath, train: bool) -> Result<Tensor> {
        let (_, _, d, h, w) = x.dims5()?;
        let s = self.stem(x, train)?;
        let n = self.blocks.len();
        match self.spec.low_level_block() {
            None => {
                let f = self.blocks(&s, path, 0, n, train)?;
                self.head(&f, None, [d, h, w], train)
            }
            Some(l) => {
                let low = self.blocks(&s, path, 0, l + 1, train)?;
                let f = self.blocks(&low, path, l + 1, n, train)?;
                self.head(&f, Some(&low), [d, h, w], train)
            }
        }
    }
}

impl Buffers for DeepLab3d {
    fn buffers(&self, out: &mut Vec<(String, Var)>) {
        self.stem.bn.buffers(out);
        for b in &self.blocks {
            b.buffers(out);
        }
        for u in self.aspp.branches.iter().chain([&self.aspp.pooling, &self.aspp.project]) {
            u.bn.buffers(out);
        }
        match &self.decoder {
            DecoderNet::Paper(d) => {
                d.up_bn.buffers(out);
                d.conv.bn.buffers(out);
            }
            DecoderNet::Skip(d) => {
                for u in [&d.reduce, &d.conv1, &d.conv2] {
                    u.bn.buffers(out);
                }
            }
        }
    }
}
