//! `autopath train`: segmentation training with Adam, step decay, foreground-biased crops, sliding-window
//! validation, atomic `best`/`last` checkpoints and exact resume.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::init::SeededVarMap;
use autopath_models::loss::segmentation_loss;
use autopath_models::ops::on_worker;
use autopath_models::optim::Adam;
use autopath_models::spec::ArchSpec;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, read_json, write_json};
use super::data::{load_sample, Sample, Sampler};
use super::infer::{labels, predict_probabilities};
use crate::error::{Error, Result};
use crate::input::preprocess::Preprocessing;
use crate::input::window::WindowConfig;
use crate::study::dataset::{Case, Dataset, Layout, Split};

/// Everything a run was started with; saved as `config.json` and read back by `--resume`, `eval`
/// and `compile`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network.
    pub spec: ArchSpec,
    /// Preprocessing, shared with evaluation and the runtime.
    pub preprocessing: Preprocessing,
    /// Sliding-window settings for validation and inference.
    pub window: WindowConfig,
    /// Dataset folder.
    pub data: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// Case ids used for training.
    pub train_ids: Vec<String>,
    /// Held-out case ids for validation (from the training split).
    pub val_ids: Vec<String>,
    /// Test case ids (never seen in training).
    pub test_ids: Vec<String>,
    /// Epochs; one epoch draws one crop per training case.
    pub epochs: usize,
    /// Crops per step.
    pub batch: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// Multiply the learning rate by `lr_gamma` every `lr_step` epochs.
    pub lr_step: usize,
    /// Decay factor.
    pub lr_gamma: f64,
    /// Validate every this many epochs (and after the last).
    pub val_every: usize,
    /// Probability that a crop is centred on foreground.
    pub foreground_fraction: f64,
    /// Seed for initialisation, crops and dropout.
    pub seed: u64,
    /// Tiles per network call in validation.
    pub tile_batch: usize,
    /// Stochastic depth: each sample skips each block's residual branch with this probability during
    /// training (0 = the paper's plain training). Makes small networks tolerant of dropped blocks.
    #[serde(default)]
    pub drop_path: f64,
    /// Number format of the convolutions on CUDA (`--precision`; older runs: fp32).
    #[serde(default)]
    pub precision: autopath_models::ops::TrainPrecision,
    /// Names of the network's output labels, index = value, for the bundle; empty: `background`,
    /// `liver` (and `tumour` with three classes).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Image modality for the bundle (`CT`, `MR`, …); None: from the intensity normalisation.
    #[serde(default)]
    pub modality: Option<String>,
}

/// Which cases a run trains, validates and tests on.
#[derive(Debug, Clone, Default)]
pub struct CaseSplit {
    /// Training case ids.
    pub train: Vec<String>,
    /// Validation case ids.
    pub val: Vec<String>,
    /// Test case ids.
    pub test: Vec<String>,
}

impl TrainConfig {
    /// `autopath train`'s defaults (the paper's schedule: 400 epochs of 4 crops, Adam 0.01 decayed
    /// ×0.1 every 100 epochs; tiles of the spec's patch with half overlap and Gaussian blending) for a
    /// network and a split of a dataset. The CLI and the demo start from here and change what they
    /// need.
    pub fn new(spec: ArchSpec, data: PathBuf, layout: Layout, split: CaseSplit) -> TrainConfig {
        TrainConfig {
            window: WindowConfig { patch: spec.patch, overlap: 0.5, blend: crate::input::window::Blend::default() },
            spec,
            preprocessing: Preprocessing::default(),
            data,
            layout,
            train_ids: split.train,
            val_ids: split.val,
            test_ids: split.test,
            epochs: 400,
            batch: 4,
            lr: 0.01,
            lr_step: 100,
            lr_gamma: 0.1,
            val_every: 10,
            foreground_fraction: 0.5,
            seed: 0,
            tile_batch: 2,
            drop_path: 0.0,
            precision: autopath_models::ops::TrainPrecision::Fp32,
            labels: Vec::new(),
            modality: None,
        }
    }

    /// A configuration for a network that did not come from `autopath train` (built in code, e.g.
    /// to compile or benchmark a given architecture): the spec's patch as tile, default
    /// preprocessing, no data.
    pub fn for_spec(spec: ArchSpec) -> TrainConfig {
        TrainConfig {
            window: WindowConfig { patch: spec.patch, overlap: 0.5, blend: crate::input::window::Blend::default() },
            spec,
            preprocessing: Preprocessing::default(),
            data: PathBuf::new(),
            layout: Layout::Lits,
            train_ids: vec![],
            val_ids: vec![],
            test_ids: vec![],
            epochs: 0,
            batch: 1,
            lr: 0.0,
            lr_step: 1,
            lr_gamma: 1.0,
            val_every: 1,
            foreground_fraction: 0.5,
            seed: 0,
            tile_batch: 1,
            drop_path: 0.0,
            precision: autopath_models::ops::TrainPrecision::Fp32,
            labels: Vec::new(),
            modality: None,
        }
    }
}

/// Sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Mean training loss of the last epoch.
    pub loss: f64,
    /// Validation Dice at this epoch, if validated.
    pub val_dice: Option<f64>,
    /// Best validation Dice so far and its epoch.
    pub best_dice: Option<f64>,
    /// Epoch of `best_dice`.
    pub best_epoch: Option<usize>,
    /// Position of the crop generator (u128 as text).
    pub rng_word_pos: String,
    /// Dropout stream `(seed, calls)`.
    pub dropout: (u64, u64),
}

/// What one epoch did, for progress display and the JSON-lines log.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    /// Epoch number (1-based).
    pub epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Mean loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Validation Dice, if validated this epoch.
    pub val_dice: Option<f64>,
    /// Seconds for this epoch (training and validation).
    pub seconds: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Best validation Dice and its epoch.
    pub best_dice: Option<f64>,
    /// Epoch of the best Dice.
    pub best_epoch: Option<usize>,
    /// Epochs completed.
    pub epochs: usize,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
}

fn candle(e: candle_core::Error) -> Error {
    Error::candle("training")(e)
}

/// Picks train/validation/test ids from a dataset.
pub fn plan_split(
    dataset: &Dataset,
    split: &Split,
    val_cases: usize,
    seed: u64,
) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    use rand::seq::SliceRandom;
    let (train, test) = dataset.split(split)?;
    let mut train: Vec<String> = train.into_iter().map(|c| c.id).collect();
    if val_cases >= train.len() {
        return Err(Error::Dataset {
            root: dataset.root.clone(),
            reason: format!(
                "{val_cases} validation cases leave no training case ({} in the training split)",
                train.len()
            ),
        });
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x7a11d));
    let val: Vec<String> = order[..val_cases].iter().map(|&i| train[i].clone()).collect();
    train.retain(|id| !val.contains(id));
    Ok((train, val, test.into_iter().map(|c| c.id).collect()))
}

/// Cases of a dataset by id, in the given order.
pub fn cases_by_id(dataset: &Dataset, ids: &[String]) -> Result<Vec<Case>> {
    ids.iter()
        .map(|id| {
            dataset.cases.iter().find(|c| &c.id == id).cloned().ok_or_else(|| Error::Dataset {
                root: dataset.root.clone(),
                reason: format!("case {id} recorded in the run is missing"),
            })
        })
        .collect()
}

/// A network with its variables, buffers and naming.
pub struct Model {
    /// The segmenter.
    pub net: DeepLab3d,
    vars: SeededVarMap,
}

impl Model {
    /// Fresh, seeded initialisation on `device` (values drawn on the host: the same on every device).
    pub fn new(spec: &ArchSpec, seed: u64, device: &Device) -> Result<Model> {
        let vars = SeededVarMap::new(seed);
        let net = DeepLab3d::load(vars.var_builder(DType::F32, device), spec).map_err(candle)?;
        Ok(Model { net, vars })
    }

    /// Trainable variables by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.named()
    }

    /// Parameters and buffers by name: what a checkpoint holds.
    pub fn state(&self) -> Vec<(String, Var)> {
        checkpoint::state(&self.vars, &self.net)
    }

    /// Tensors to save.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        checkpoint::tensors(self.state())
    }
}

/// Loads a trained segmenter (`best` or `last`) for inference.
pub fn load_segmenter(run: &Path, which: &str) -> Result<(DeepLab3d, TrainConfig)> {
    let cfg: TrainConfig = read_json(&run.join("config.json"))?;
    let st = run.join(format!("{which}.safetensors"));
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu)
        .map_err(|e| Error::invalid("checkpoint", format!("{}: {e}", st.display())))?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net =
        DeepLab3d::load(vb, &cfg.spec).map_err(|e| Error::invalid("checkpoint", format!("{}: {e}", st.display())))?;
    Ok((net, cfg))
}

/// Mean whole-volume Dice (foreground = label > 0) of `net` over `samples` on a block path.
pub fn mean_dice(
    net: &DeepLab3d,
    samples: &[Sample],
    window: &WindowConfig,
    path: BlockPath,
    tile_batch: usize,
) -> Result<f64> {
    let mut total = 0.0;
    for s in samples {
        let probs = predict_probabilities(net, &s.image, s.record.pad_value, window, path, tile_batch)?;
        let pred = labels(&probs, net.spec().output);
        total += super::dice(pred.iter().map(|&v| v > 0), s.labels.iter().map(|&v| v > 0));
    }
    Ok(total / samples.len().max(1) as f64)
}

/// Crops used to recompute BatchNorm statistics before each validation: enough batches for stable
/// estimates, few enough to cost a fraction of an epoch.
const RECALIBRATION_CROPS: usize = 16;

/// Recomputes the running BatchNorm statistics for the current weights (see
/// [`autopath_models::layers::precise_statistics`] for why) from fixed crops of the training cases,
/// drawn from their own generator: the training crop stream, the dropout stream and the weights are
/// left exactly as they were, so training itself does not change and resuming stays exact.
fn recalibrate(net: &DeepLab3d, train_set: &[Sample], sampler: &Sampler, cfg: &TrainConfig) -> Result<()> {
    if train_set.is_empty() {
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xB47C_4E0F);
    let batch = cfg.batch.max(2);
    let batches = RECALIBRATION_CROPS.div_ceil(batch);
    let p = cfg.spec.patch;
    let dropout = net.aspp.dropout.state();
    autopath_models::layers::precise_statistics(net, batches, |i| {
        let mut xs = Vec::with_capacity(batch * p.iter().product::<usize>());
        for k in 0..batch {
            let (x, _) = sampler.crop(&train_set[(i * batch + k) % train_set.len()], &mut rng);
            xs.extend(x.iter().copied());
        }
        let x = Tensor::from_vec(xs, (batch, 1, p[0], p[1], p[2]), net.device())?;
        net.forward(&x, BlockPath::Full, true).map(|_| ())
    })
    .map_err(candle)?;
    net.aspp.dropout.set_state(dropout.0, dropout.1);
    Ok(())
}

fn lr_at(cfg: &TrainConfig, epoch: usize) -> f64 {
    cfg.lr * cfg.lr_gamma.powi((epoch / cfg.lr_step.max(1)) as i32)
}

/// Starts a new run in `out` (created; must not already hold a run), computing on `device`.
pub fn train(cfg: TrainConfig, out: &Path, device: &Device, on_epoch: &dyn Fn(&EpochReport)) -> Result<Summary> {
    super::device::check_precision(device, cfg.precision)?;
    if out.join("config.json").exists() {
        return Err(Error::invalid(
            "--out",
            format!("{} already holds a run; use --resume {} or another folder", out.display(), out.display()),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_json(&out.join("config.json"), &cfg)?;
    run(cfg, out, None, device, on_epoch)
}

/// Continues a run from its `last` checkpoint (on any device); `epochs` may extend it.
pub fn resume(out: &Path, epochs: Option<usize>, device: &Device, on_epoch: &dyn Fn(&EpochReport)) -> Result<Summary> {
    let mut cfg: TrainConfig = read_json(&out.join("config.json"))?;
    crate::atomic::remove_stale_temporaries(out)?;
    if let Some(e) = epochs {
        cfg.epochs = e;
        write_json(&out.join("config.json"), &cfg)?;
    }
    let state =
        if out.join("last.json").exists() { Some(checkpoint::load::<CheckpointMeta>(out, "last")?) } else { None };
    run(cfg, out, state, device, on_epoch)
}

/// One epoch: every training case once, in a shuffled order, one crop each, `cfg.batch` crops per
/// Adam step (with per-sample stochastic depth when `cfg.drop_path` > 0). Returns the summed loss.
fn train_epoch(
    model: &Model,
    adam: &mut Adam,
    train_set: &[Sample],
    sampler: &Sampler,
    cfg: &TrainConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<f64> {
    let p = cfg.spec.patch;
    let mut loss_sum = 0.0;
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng);
    for idx in order.chunks(cfg.batch.max(1)) {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for &i in idx {
            let (x, y) = sampler.crop(&train_set[i], rng);
            xs.extend(x.iter().copied());
            ys.extend(y.iter().map(|&v| v as f32));
        }
        let b = idx.len();
        let x = Tensor::from_vec(xs, (b, 1, p[0], p[1], p[2]), device).map_err(candle)?;
        let y = Tensor::from_vec(ys, (b, p[0], p[1], p[2]), device).map_err(candle)?;
        let masks: Vec<Vec<bool>> = (0..b)
            .map(|_| (0..cfg.spec.num_blocks()).map(|_| rng.random::<f64>() >= cfg.drop_path).collect())
            .collect();
        let path = if cfg.drop_path > 0.0 { BlockPath::PerSample(&masks) } else { BlockPath::Full };
        let logits = model.net.forward(&x, path, true).map_err(candle)?;
        let loss = segmentation_loss(&logits, &y, cfg.spec.output).map_err(candle)?;
        adam.step(&loss.backward().map_err(candle)?).map_err(candle)?;
        loss_sum += loss.to_scalar::<f32>().map_err(candle)? as f64;
    }
    Ok(loss_sum)
}

/// Saves `best` when this epoch's validation Dice is the highest yet (kept until a strictly better
/// one), then `last` with the optimiser state.
fn save_epoch(out: &Path, model: &Model, adam: &Adam, meta: &mut CheckpointMeta) -> Result<()> {
    if let Some(d) = meta.val_dice {
        if meta.best_dice.is_none_or(|b| d > b) {
            meta.best_dice = Some(d);
            meta.best_epoch = Some(meta.epoch);
            checkpoint::save(out, "best", &model.tensors(), meta)?;
        }
    }
    let mut tensors = model.tensors();
    tensors.extend(adam.state());
    checkpoint::save(out, "last", &tensors, meta)
}

/// The progress of a run that has not trained yet.
fn fresh_meta(seed: u64) -> CheckpointMeta {
    CheckpointMeta {
        epoch: 0,
        steps: 0,
        loss: f64::NAN,
        val_dice: None,
        best_dice: None,
        best_epoch: None,
        rng_word_pos: "0".into(),
        dropout: (seed, 0),
    }
}

fn run(
    cfg: TrainConfig,
    out: &Path,
    state: Option<(HashMap<String, Tensor>, CheckpointMeta)>,
    device: &Device,
    on_epoch: &dyn Fn(&EpochReport),
) -> Result<Summary> {
    let started = Instant::now();
    cfg.window.validate()?;
    super::device::check_precision(device, cfg.precision)?;
    let _precision = super::device::PrecisionScope::set(cfg.precision);
    let dataset = Dataset::open(&cfg.data, Some(cfg.layout))?;
    let prep = cfg.preprocessing;
    let load = |ids: &[String]| -> Result<Vec<_>> {
        cases_by_id(&dataset, ids)?.iter().map(|c| load_sample(c, &prep)).collect()
    };
    let (train_set, val_set) = (load(&cfg.train_ids)?, load(&cfg.val_ids)?);

    let model = Model::new(&cfg.spec, cfg.seed, device)?;
    let mut adam = Adam::new(model.trainable(), cfg.lr).map_err(candle)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut meta = fresh_meta(cfg.seed);
    if let Some((tensors, m)) = state {
        let at = checkpoint::Progress { steps: m.steps, rng_word_pos: &m.rng_word_pos };
        checkpoint::resume(&model.state(), &mut adam, &mut rng, &tensors, &out.join("last.safetensors"), at)?;
        meta = m;
    }
    model.net.aspp.dropout.set_state(meta.dropout.0, meta.dropout.1);

    let sampler = Sampler { patch: cfg.spec.patch, foreground_fraction: cfg.foreground_fraction, flips: true };
    let steps_per_epoch = train_set.len().div_ceil(cfg.batch);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("log.jsonl"))
        .map_err(|e| Error::io(out.join("log.jsonl"), e))?;
    for epoch in meta.epoch..cfg.epochs {
        let t0 = Instant::now();
        adam.lr = lr_at(&cfg, epoch);
        let loss_sum =
            on_worker(device, || train_epoch(&model, &mut adam, &train_set, &sampler, &cfg, &mut rng, device))?;
        let done = epoch + 1;
        let val_dice = if done % cfg.val_every.max(1) == 0 || done == cfg.epochs {
            on_worker(device, || -> Result<f64> {
                recalibrate(&model.net, &train_set, &sampler, &cfg)?;
                mean_dice(&model.net, &val_set, &cfg.window, BlockPath::Full, cfg.tile_batch)
            })
            .map(Some)?
        } else {
            None
        };
        meta.epoch = done;
        meta.steps = adam.steps();
        meta.loss = loss_sum / steps_per_epoch as f64;
        meta.val_dice = val_dice;
        meta.rng_word_pos = rng.get_word_pos().to_string();
        meta.dropout = model.net.aspp.dropout.state();
        save_epoch(out, &model, &adam, &mut meta)?;
        let report = EpochReport {
            epoch: done,
            epochs: cfg.epochs,
            loss: meta.loss,
            lr: adam.lr,
            val_dice,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let line = serde_json::to_string(&report).map_err(|e| Error::invalid("log", e.to_string()))?;
        writeln!(log, "{line}").map_err(|e| Error::io(out.join("log.jsonl"), e))?;
        on_epoch(&report);
    }
    Ok(Summary {
        best_dice: meta.best_dice,
        best_epoch: meta.best_epoch,
        epochs: meta.epoch,
        seconds: started.elapsed().as_secs_f64(),
    })
}
