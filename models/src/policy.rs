//! The policy network: a 3D ResNet-10 that reads a downsampled volume and gives, per block, the
//! probability of keeping it.

use candle_core::{DType, Module, Result, Tensor, Var};
use candle_nn::{Linear, VarBuilder};

use crate::block::{Block, BlockKeep, ConvBn};
use crate::deeplab::STEM_POOL;
use crate::layers::{global_avg_pool, max_pool3d, Buffers};
use crate::ops::Conv3dParams;
use crate::spec::{ArchSpec, BlockKind, BlockSpec};

/// ResNet-10 (one BasicBlock per stage) → global average pool → Linear(N) → sigmoid.
#[derive(Debug, Clone)]
pub struct PolicyNet {
    /// Stem conv 7×7×7 s2 + BN.
    pub stem: ConvBn,
    /// Four basic blocks.
    pub blocks: Vec<Block>,
    /// Final linear layer to N logits.
    pub fc: Linear,
    num_blocks: usize,
}

impl PolicyNet {
    /// Creates or loads the policy for a segmenter spec (its N and policy width).
    pub fn load(vb: VarBuilder, spec: &ArchSpec) -> Result<Self> {
        let w = spec.policy.width;
        let stem = ConvBn::load(
            &vb,
            "stem.conv",
            "stem.bn",
            (spec.in_channels, w),
            7,
            Conv3dParams { stride: [2; 3], padding: [3; 3], dilation: [1; 3] },
        )?;
        let mut blocks = Vec::new();
        let mut in_ch = w;
        for stage in 0..4 {
            let planes = w << stage;
            let s = if stage == 0 { 1 } else { 2 };
            let b = BlockSpec {
                stage,
                index: 0,
                in_channels: in_ch,
                planes,
                out_channels: planes,
                stride: [1, s, s],
                projection: s != 1 || in_ch != planes,
            };
            blocks.push(Block::load(vb.pp(b.name()), b, BlockKind::Basic)?);
            in_ch = planes;
        }
        let n = spec.num_blocks();
        let fc = candle_nn::linear(in_ch, n, vb.pp("fc"))?;
        Ok(PolicyNet { stem, blocks, fc, num_blocks: n })
    }

    /// A copy in `dtype` (the compiler's f64 parity reference).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let fc = Linear::new(self.fc.weight().to_dtype(dtype)?, self.fc.bias().map(|b| b.to_dtype(dtype)).transpose()?);
        Ok(PolicyNet {
            stem: self.stem.to_dtype(dtype)?,
            blocks: self.blocks.iter().map(|b| b.to_dtype(dtype)).collect::<Result<_>>()?,
            fc,
            num_blocks: self.num_blocks,
        })
    }

    /// Number of blocks the policy decides on.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Where the weights live: inputs must be created there.
    pub fn device(&self) -> &candle_core::Device {
        self.stem.conv.weight().device()
    }

    /// Keep logits `[B, N]` for a downsampled volume `[B, 1, d, h, w]`.
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = max_pool3d(&self.stem.forward_relu(x, train)?, STEM_POOL)?;
        for b in &self.blocks {
            h = b.forward(&h, BlockKeep::All, train)?;
        }
        let (n, c, _, _, _) = h.dims5()?;
        self.fc.forward(&global_avg_pool(&h)?.reshape((n, c))?)
    }

    /// Keep probabilities `p ∈ [0, 1]^{B×N}`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logits(x, train)?)
    }
}

impl Buffers for PolicyNet {
    fn buffers(&self, out: &mut Vec<(String, Var)>) {
        self.stem.bn.buffers(out);
        for b in &self.blocks {
            b.buffers(out);
        }
    }
}
