//! The geometry of the 3D operations: what the CPU kernels and the composed device-generic forms
//! both take, so that neither needs the other.

use candle_core::{bail, Result};

/// Stride, padding and dilation per axis `(D, H, W)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conv3dParams {
    /// Step between output positions.
    pub stride: [usize; 3],
    /// Zero padding on both sides.
    pub padding: [usize; 3],
    /// Spacing between kernel taps.
    pub dilation: [usize; 3],
}

impl Default for Conv3dParams {
    fn default() -> Self {
        Conv3dParams { stride: [1; 3], padding: [0; 3], dilation: [1; 3] }
    }
}

impl Conv3dParams {
    /// Output extent for an input extent and kernel size, or an error if the kernel does not fit.
    pub fn out_dims(&self, input: [usize; 3], kernel: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for a in 0..3 {
            let span = self.dilation[a] * (kernel[a] - 1) + 1;
            let padded = input[a] + 2 * self.padding[a];
            if self.stride[a] == 0 || self.dilation[a] == 0 || padded < span {
                bail!("conv3d: kernel {kernel:?} with {self:?} does not fit input {input:?}")
            }
            out[a] = (padded - span) / self.stride[a] + 1;
        }
        Ok(out)
    }
}

/// Kernel, stride and padding per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool3dParams {
    /// Window size.
    pub kernel: [usize; 3],
    /// Step.
    pub stride: [usize; 3],
    /// Implicit −∞ padding on both sides.
    pub padding: [usize; 3],
}

impl MaxPool3dParams {
    /// Output size for an input size.
    pub fn out_dims(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        let mut o = [0; 3];
        for a in 0..3 {
            if self.padding[a] * 2 > self.kernel[a] || input[a] + 2 * self.padding[a] < self.kernel[a] {
                bail!("max_pool3d: {self:?} does not fit input {input:?}")
            }
            o[a] = (input[a] + 2 * self.padding[a] - self.kernel[a]) / self.stride[a] + 1;
        }
        Ok(o)
    }
}
