//! Checkpoints: one safetensors file of named tensors plus a JSON sidecar, both written atomically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{de::DeserializeOwned, Serialize};

use crate::atomic::{write_atomically, write_bytes_atomically};
use crate::error::{Error, Result};

fn candle_err(path: &Path, e: candle_core::Error) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), source: e }
}

/// Writes `tensors` to `stem.safetensors` and `meta` to `stem.json`. The JSON goes last: a reader that
/// finds it also finds the tensors it describes.
pub fn save<M: Serialize>(dir: &Path, stem: &str, tensors: &HashMap<String, Tensor>, meta: &M) -> Result<()> {
    let st = dir.join(format!("{stem}.safetensors"));
    write_atomically(&st, |tmp| candle_core::safetensors::save(tensors, tmp).map_err(|e| candle_err(&st, e)))?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    write_bytes_atomically(&dir.join(format!("{stem}.json")), &json)
}

/// Reads `stem.safetensors` and `stem.json`.
pub fn load<M: DeserializeOwned>(dir: &Path, stem: &str) -> Result<(HashMap<String, Tensor>, M)> {
    let st = dir.join(format!("{stem}.safetensors"));
    let js = dir.join(format!("{stem}.json"));
    let meta_bytes = std::fs::read(&js).map_err(|e| Error::io(&js, e))?;
    let meta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| Error::invalid("checkpoint", format!("{}: {e}", js.display())))?;
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| candle_err(&st, e))?;
    Ok((tensors, meta))
}

/// Reads a JSON file.
pub fn read_json<M: DeserializeOwned>(path: &Path) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}

/// Writes a JSON file atomically.
pub fn write_json<M: Serialize>(path: &Path, value: &M) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| Error::invalid("JSON", e.to_string()))?;
    write_bytes_atomically(path, &json)
}

/// Parameters and buffers (BatchNorm statistics) by name: what a checkpoint holds.
pub fn state(
    vars: &autopath_models::init::SeededVarMap,
    net: &dyn autopath_models::layers::Buffers,
) -> Vec<(String, Var)> {
    let mut all = vars.named();
    net.buffers(&mut all);
    all
}

/// The tensors of named variables, to save.
pub fn tensors(state: Vec<(String, Var)>) -> HashMap<String, Tensor> {
    state.into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect()
}

/// Copies saved values into variables by name; every variable must be present with its shape.
pub fn restore(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
    for (name, var) in vars {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::invalid("checkpoint", format!("{}: tensor {name} missing", source.display())))?;
        if t.shape() != var.shape() {
            return Err(Error::invalid(
                "checkpoint",
                format!(
                    "{}: tensor {name} has shape {:?}, the model needs {:?}",
                    source.display(),
                    t.shape(),
                    var.shape()
                ),
            ));
        }
        let t = t.to_dtype(var.dtype()).and_then(|t| t.to_device(var.device())).map_err(|e| candle_err(source, e))?;
        var.set(&t).map_err(|e| candle_err(source, e))?;
    }
    Ok(())
}

/// Where a run stood at its `last` checkpoint: the optimiser's step count and the generator position.
pub struct Progress<'a> {
    /// Optimiser steps taken.
    pub steps: u64,
    /// The generator's word position, as saved.
    pub rng_word_pos: &'a str,
}

/// Puts a run back where `last` left it: model variables, Adam's moments and step count, and the
/// generator, so that a resumed run continues bit for bit.
pub fn resume(
    state: &[(String, Var)],
    adam: &mut autopath_models::optim::Adam,
    rng: &mut rand_chacha::ChaCha8Rng,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
    at: Progress,
) -> Result<()> {
    restore(state, tensors, source)?;
    let device = state.first().map_or(Device::Cpu, |(_, v)| v.device().clone());
    adam.load_state(&|k| tensors.get(k).and_then(|t| t.to_device(&device).ok()), at.steps)
        .map_err(|e| candle_err(source, e))?;
    let pos = at.rng_word_pos.parse().map_err(|_| Error::invalid("checkpoint", "bad generator position"))?;
    rng.set_word_pos(pos);
    Ok(())
}
