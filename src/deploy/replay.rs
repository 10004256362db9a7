//! Whole-network graphs (`full.onnx`, the whole-path graphs) run through fixed buffers: the tiles are
//! written into one input tensor allocated once, padded with zero tiles to the session's batch, and
//! the probabilities come out of one output tensor allocated once, both bound to the session
//! (IoBinding). Under CUDA with `--cuda-graph`, ONNX Runtime captures the session's kernels in a CUDA
//! graph on its first runs and replays them afterwards, which needs exactly this: the same shapes and
//! the same addresses at every run. On the CPU (`--io-binding on`) the same code runs with host
//! buffers, which is how it is tested without a GPU.

use ndarray::{s, ArrayView5};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, TensorRef};

use crate::error::{Error, Result};

fn ort_err(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::ort(what, e)
}

/// A session's input and output buffers, bound once.
pub struct Replay {
    input: Tensor<f32>,
    binding: IoBinding,
    /// Tiles per run: every run computes this many, the padding included.
    batch: usize,
    output_name: String,
    /// Host buffers for a device session: a short batch padded to the full one, and the output
    /// copied back (allocated once: at the paper's tile a batch of two is 25 MB).
    staging: Option<(ndarray::Array5<f32>, Tensor<f32>)>,
}

/// The shape of a graph's tensor with its batch set to `batch`; every other axis must be fixed.
fn fixed_shape(session: &Session, what: &str, name: &str, batch: usize) -> Result<Vec<i64>> {
    let outlet = session
        .inputs()
        .iter()
        .chain(session.outputs())
        .find(|o| o.name() == name)
        .ok_or_else(|| ort_err(what, format!("graph has no value {name:?}")))?;
    let shape = outlet.dtype().tensor_shape().ok_or_else(|| ort_err(what, format!("{name:?} is not a tensor")))?;
    let mut dims: Vec<i64> = shape.iter().copied().collect();
    match dims.first_mut() {
        Some(b) => *b = batch as i64,
        None => return Err(ort_err(what, format!("{name:?} has no batch axis"))),
    }
    if dims.len() != 5 || dims.iter().any(|&d| d < 1) {
        return Err(ort_err(what, format!("{name:?} is not [batch, C, D, H, W] with fixed C, D, H, W: {dims:?}")));
    }
    Ok(dims)
}

fn dims5(shape: &[i64]) -> [usize; 5] {
    let mut d = [0; 5];
    for (d, &s) in d.iter_mut().zip(shape) {
        *d = s as usize;
    }
    d
}

impl Replay {
    /// Buffers for `session` (`input` → `output`, `batch` tiles per run) on `device` (None: host).
    pub fn new(session: &Session, what: &str, names: (&str, &str), batch: usize, device: Option<i32>) -> Result<Self> {
        let (input_name, output_name) = names;
        let allocator = match device {
            Some(id) => {
                let info = MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default)
                    .map_err(|e| ort_err(what, e))?;
                Allocator::new(session, info).map_err(|e| ort_err(what, e))?
            }
            None => Allocator::default(),
        };
        let in_shape = fixed_shape(session, what, input_name, batch)?;
        let out_shape = fixed_shape(session, what, output_name, batch)?;
        let input = Tensor::<f32>::new(&allocator, in_shape.clone()).map_err(|e| ort_err(what, e))?;
        let output = Tensor::<f32>::new(&allocator, out_shape.clone()).map_err(|e| ort_err(what, e))?;
        let mut binding = session.create_binding().map_err(|e| ort_err(what, e))?;
        binding.bind_input(input_name, &input).map_err(|e| ort_err(what, e))?;
        binding.bind_output(output_name, output).map_err(|e| ort_err(what, e))?;
        let staging = match device {
            Some(_) => Some((
                ndarray::Array5::zeros(dims5(&in_shape)),
                Tensor::<f32>::new(&Allocator::default(), out_shape).map_err(|e| ort_err(what, e))?,
            )),
            None => None,
        };
        Ok(Replay { input, binding, batch, output_name: output_name.into(), staging })
    }

    /// Runs `session` on `tiles` (at most `batch` of them, in standard layout) and hands `f` the
    /// probabilities of those tiles, in host memory.
    pub fn run<R>(
        &mut self,
        session: &mut Session,
        what: &str,
        tiles: ArrayView5<f32>,
        f: impl FnOnce(ArrayView5<f32>) -> R,
    ) -> Result<R> {
        let n = tiles.shape()[0];
        if n > self.batch {
            return Err(ort_err(what, format!("{n} tiles in one call; the session was built for {}", self.batch)));
        }
        self.fill(what, tiles)?;
        let mut out = session.run_binding(&self.binding).map_err(|e| ort_err(what, e))?;
        let p =
            out.remove(&self.output_name).ok_or_else(|| ort_err(what, format!("no output {:?}", self.output_name)))?;
        let p = p.downcast::<ort::value::TensorValueType<f32>>().map_err(|e| ort_err(what, e))?;
        let host = match self.staging.as_mut() {
            Some((_, host)) => {
                p.copy_into(&mut *host).map_err(|e| ort_err(what, e))?;
                &*host
            }
            None => &p,
        };
        let all = host.extract_array().into_dimensionality::<ndarray::Ix5>().map_err(|e| ort_err(what, e))?;
        Ok(f(all.slice_move(s![..n, .., .., .., ..])))
    }

    /// Writes `tiles` into the bound input, zero tiles after them.
    fn fill(&mut self, what: &str, tiles: ArrayView5<f32>) -> Result<()> {
        let n = tiles.shape()[0];
        let expected = self.input.shape().iter().skip(1).map(|&d| d as usize).collect::<Vec<_>>();
        if tiles.shape()[1..] != expected[..] {
            return Err(ort_err(what, format!("tiles {:?} for a graph of {:?}", tiles.shape(), self.input.shape())));
        }
        match self.staging.as_mut() {
            None => {
                let mut a = self.input.extract_array_mut();
                let mut a = a.view_mut().into_dimensionality::<ndarray::Ix5>().map_err(|e| ort_err(what, e))?;
                a.slice_mut(s![..n, .., .., .., ..]).assign(&tiles);
                a.slice_mut(s![n.., .., .., .., ..]).fill(0.0);
            }
            Some((padded, _)) => {
                let source = if n == self.batch && tiles.is_standard_layout() {
                    tiles
                } else {
                    padded.slice_mut(s![..n, .., .., .., ..]).assign(&tiles);
                    padded.slice_mut(s![n.., .., .., .., ..]).fill(0.0);
                    padded.view()
                };
                let host = TensorRef::from_array_view(source).map_err(|e| ort_err(what, e))?;
                host.copy_into(&mut self.input).map_err(|e| ort_err(what, e))?;
            }
        }
        Ok(())
    }
}
