//! Whole-volume prediction with the Candle segmenter: sliding-window tiles in batches, blended into one
//! accumulator. The runtime does the same with ONNX Runtime (same tiling, same blending).

use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::policy::PolicyNet;
use autopath_models::spec::Output;
use candle_core::Tensor;
use ndarray::{Array3, Array4, Array5, ArrayView5};

use crate::error::{Error, Result};
use crate::input::window::{slide, TileEngine, WindowConfig};

fn candle(e: candle_core::Error) -> Error {
    Error::candle("network")(e)
}

/// The Candle segmenter on a path, as a [`TileEngine`].
pub struct CandleEngine<'a> {
    /// The network.
    pub net: &'a DeepLab3d,
    /// The blocks it runs.
    pub path: BlockPath<'a>,
}

impl TileEngine for CandleEngine<'_> {
    fn channels(&self) -> usize {
        self.net.spec().output.channels()
    }

    fn run(&mut self, tiles: ArrayView5<f32>, sink: &mut dyn FnMut(ArrayView5<f32>)) -> Result<()> {
        let dims = tiles.dim();
        let tiles = tiles.as_standard_layout();
        let data = tiles.as_slice().ok_or_else(|| Error::invalid("tiles", "not contiguous"))?;
        let x =
            Tensor::from_slice(data, (dims.0, dims.1, dims.2, dims.3, dims.4), self.net.device()).map_err(candle)?;
        let output = self.net.spec().output;
        let logits = self.net.forward(&x, self.path, false).map_err(candle)?;
        let probs = probabilities(&logits, output).map_err(candle)?;
        let v: Vec<f32> = probs.flatten_all().and_then(|t| t.to_vec1()).map_err(candle)?;
        let probs = Array5::from_shape_vec((dims.0, output.channels(), dims.2, dims.3, dims.4), v)
            .map_err(|e| Error::invalid("network output", e.to_string()))?;
        sink(probs.view());
        Ok(())
    }
}

/// Class probabilities `[K, D, H, W]` for a normalised image `[D, H, W]`.
pub fn predict_probabilities(
    net: &DeepLab3d,
    image: &Array3<f32>,
    pad_value: f32,
    window: &WindowConfig,
    path: BlockPath,
    tile_batch: usize,
) -> Result<Array4<f32>> {
    Ok(slide(&mut CandleEngine { net, path }, image, pad_value, window, tile_batch)?.0)
}

/// Sigmoid or softmax over the class axis.
pub fn probabilities(logits: &Tensor, output: Output) -> candle_core::Result<Tensor> {
    match output {
        Output::Sigmoid => candle_nn::ops::sigmoid(logits),
        Output::Softmax { .. } => candle_nn::ops::softmax(logits, 1),
    }
}

/// Labels from probabilities, as the runtime makes them ([`crate::labels::from_probabilities`] at
/// the manifest's default threshold).
pub fn labels(probs: &Array4<f32>, output: Output) -> Array3<u8> {
    crate::labels::from_probabilities(probs, activation(output), crate::labels::FOREGROUND_THRESHOLD)
}

/// The bundle's name for a network's output.
pub fn activation(output: Output) -> autopath_bundle::Activation {
    match output {
        Output::Sigmoid => autopath_bundle::Activation::Sigmoid,
        Output::Softmax { classes } => autopath_bundle::Activation::Softmax { classes },
    }
}

/// Keep probabilities of a trained policy (evaluation mode) for a normalised volume, resampled to
/// the policy's input size exactly as the runtime does.
pub fn keep_probabilities(net: &PolicyNet, image: &Array3<f32>, input: [usize; 3]) -> Result<Vec<f32>> {
    let x = crate::input::preprocess::resample_linear(image, input);
    let t = Tensor::from_vec(x.into_raw_vec_and_offset().0, (1, 1, input[0], input[1], input[2]), net.device())
        .map_err(Error::candle("policy"))?;
    net.forward(&t, false).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(Error::candle("policy"))
}
