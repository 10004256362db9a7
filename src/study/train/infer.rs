//! Whole-volume prediction with the Candle segmenter: sliding-window tiles in batches, blended into one
//! accumulator. The runtime does the same with ONNX Runtime (same tiling, same blending).

use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::spec::Output;
use candle_core::Tensor;
use ndarray::{Array3, Array4, Axis};

use crate::error::{Error, Result};
use crate::input::window::{extract, pad_to_patch, Accumulator, WindowConfig};

fn candle(e: candle_core::Error) -> Error {
    Error::candle("network")(e)
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
    let shape: [usize; 3] = image.dim().into();
    let padded = pad_to_patch(image.clone(), window.patch, pad_value);
    let pshape: [usize; 3] = padded.dim().into();
    let output = net.spec().output;
    let mut acc = Accumulator::new(output.channels(), pshape, window);
    let tiles = window.tiles(pshape);
    let p = window.patch;
    for chunk in tiles.chunks(tile_batch.max(1)) {
        let mut data: Vec<f32> = Vec::with_capacity(chunk.len() * p.iter().product::<usize>());
        for &t in chunk {
            data.extend(extract(&padded.view(), t, p).iter());
        }
        let x = Tensor::from_vec(data, (chunk.len(), 1, p[0], p[1], p[2]), net.device()).map_err(candle)?;
        let logits = net.forward(&x, path, false).map_err(candle)?;
        let probs = probabilities(&logits, output).map_err(candle)?;
        let (b, k) = (chunk.len(), output.channels());
        let v: Vec<f32> = probs.flatten_all().and_then(|t| t.to_vec1()).map_err(candle)?;
        let arr = ndarray::Array5::from_shape_vec((b, k, p[0], p[1], p[2]), v)
            .map_err(|e| Error::invalid("network output", e.to_string()))?;
        for (i, &t) in chunk.iter().enumerate() {
            acc.add(t, arr.index_axis(Axis(0), i));
        }
    }
    Ok(acc.finish(shape))
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
pub fn activation(output: Output) -> crate::input::bundle::Activation {
    match output {
        Output::Sigmoid => crate::input::bundle::Activation::Sigmoid,
        Output::Softmax { classes } => crate::input::bundle::Activation::Softmax { classes },
    }
}
