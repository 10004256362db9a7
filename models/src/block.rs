//! A droppable residual block: `y = relu(shortcut(x) + F(x))` when kept, `y = shortcut(x)` when dropped.

use candle_core::{DType, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;

use crate::layers::{BatchNorm3d, Buffers, Conv3d};
use crate::ops::residual::add_relu;
use crate::ops::Conv3dParams;
use crate::spec::{BlockKind, BlockSpec};

/// A convolution followed by BatchNorm: the unit the exporter folds into one ONNX `Conv`.
#[derive(Debug, Clone)]
pub struct ConvBn {
    /// The convolution (no bias).
    pub conv: Conv3d,
    /// Its BatchNorm.
    pub bn: BatchNorm3d,
}

impl ConvBn {
    /// Loads `conv` under `vb.pp(name)` and its BN under `vb.pp(bn_name)`.
    pub fn load(
        vb: &VarBuilder,
        name: &str,
        bn_name: &str,
        io: (usize, usize),
        kernel: usize,
        params: Conv3dParams,
    ) -> Result<Self> {
        Ok(ConvBn {
            conv: Conv3d::load(vb.pp(name), io.0, io.1, [kernel; 3], params, false)?,
            bn: BatchNorm3d::load(vb.pp(bn_name), io.1)?,
        })
    }

    /// The same unit in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(ConvBn { conv: self.conv.to_dtype(dtype)?, bn: self.bn.to_dtype(dtype)? })
    }

    /// conv → BN.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?, train)
    }

    /// conv → BN → ReLU, with BN and ReLU fused.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_relu(&self.conv.forward(x)?, train)
    }
}

/// Whether a block runs, for the whole batch or per sample.
#[derive(Debug, Clone, Copy)]
pub enum BlockKeep<'a> {
    /// Every sample runs the residual branch.
    All,
    /// No sample does: the branch is not computed at all.
    None,
    /// Per-sample 0/1 mask `[B]` (same dtype as the activations): the branch runs for the batch and is
    /// multiplied by the mask, so samples with different paths share one forward pass.
    Mask(&'a Tensor),
}

/// A BasicBlock or Bottleneck with its shortcut.
#[derive(Debug, Clone)]
pub struct Block {
    spec: BlockSpec,
    /// The residual branch's conv+BN units in order (2 for basic, 3 for bottleneck).
    pub branch: Vec<ConvBn>,
    /// Projection shortcut (1×1×1 conv + BN), if any.
    pub shortcut: Option<ConvBn>,
}

impl Block {
    /// Creates or loads a block under `vb` (e.g. `stage2.block0`).
    pub fn load(vb: VarBuilder, spec: BlockSpec, kind: BlockKind) -> Result<Self> {
        let s = Conv3dParams { stride: spec.stride, padding: [1; 3], dilation: [1; 3] };
        let (ci, p, co) = (spec.in_channels, spec.planes, spec.out_channels);
        let branch = match kind {
            BlockKind::Basic => {
                vec![
                    ConvBn::load(&vb, "conv1", "bn1", (ci, p), 3, s)?,
                    ConvBn::load(
                        &vb,
                        "conv2",
                        "bn2",
                        (p, co),
                        3,
                        Conv3dParams { padding: [1; 3], ..Default::default() },
                    )?,
                ]
            }
            BlockKind::Bottleneck => vec![
                ConvBn::load(&vb, "conv1", "bn1", (ci, p), 1, Conv3dParams::default())?,
                ConvBn::load(&vb, "conv2", "bn2", (p, p), 3, s)?,
                ConvBn::load(&vb, "conv3", "bn3", (p, co), 1, Conv3dParams::default())?,
            ],
        };
        let shortcut = if spec.projection {
            Some(ConvBn::load(
                &vb,
                "downsample.conv",
                "downsample.bn",
                (ci, co),
                1,
                Conv3dParams { stride: spec.stride, ..Default::default() },
            )?)
        } else {
            None
        };
        Ok(Block { spec, branch, shortcut })
    }

    /// The block's place in the network.
    pub fn spec(&self) -> &BlockSpec {
        &self.spec
    }

    /// The same block in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Block {
            spec: self.spec,
            branch: self.branch.iter().map(|u| u.to_dtype(dtype)).collect::<Result<_>>()?,
            shortcut: self.shortcut.as_ref().map(|u| u.to_dtype(dtype)).transpose()?,
        })
    }

    /// The shortcut path: projection or identity. Always executed.
    pub fn shortcut(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.shortcut {
            Some(p) => p.forward(x, train),
            None => Ok(x.clone()),
        }
    }

    /// The residual branch F(x), before the addition.
    pub fn residual(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.branch.len() - 1;
        for (i, unit) in self.branch.iter().enumerate() {
            h = if i < last { unit.forward_relu(&h, train)? } else { unit.forward(&h, train)? };
        }
        Ok(h)
    }

    /// Kept: `relu(shortcut(x) + F(x))`; dropped: `shortcut(x)`.
    pub fn forward(&self, x: &Tensor, keep: BlockKeep, train: bool) -> Result<Tensor> {
        let r = self.shortcut(x, train)?;
        match keep {
            BlockKeep::None => Ok(r),
            BlockKeep::All => add_relu(&r, &self.residual(x, train)?),
            BlockKeep::Mask(m) => {
                let kept = add_relu(&r, &self.residual(x, train)?)?;
                // mask·kept + (1 − mask)·r, per sample.
                let m = m.reshape((m.dim(0)?, 1, 1, 1, 1))?;
                kept.broadcast_mul(&m)? + r.broadcast_mul(&(1.0 - &m)?)?
            }
        }
    }
}

impl Buffers for Block {
    fn buffers(&self, out: &mut Vec<(String, Var)>) {
        for unit in self.branch.iter().chain(&self.shortcut) {
            unit.bn.buffers(out);
        }
    }
}
