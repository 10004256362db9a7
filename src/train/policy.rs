//! `autopath train-policy`: REINFORCE with a self-critical baseline and a curriculum over blocks. The
//! segmenter is frozen; rewards come from real forward passes of its compiled graphs on the sampled
//! and the greedy path (shared stem and prefixes, see [`crate::paths`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autopath_models::init::SeededVarMap;
use autopath_models::optim::Adam;
use autopath_models::policy::PolicyNet;
use autopath_models::reward::{bounded, learned_blocks, reinforce_loss, reward};
use autopath_models::spec::ArchSpec;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, read_json, write_json};
use super::data::load_sample;
use super::segment::{cases_by_id, load_segmenter, TrainConfig};
use crate::bundle::Bundle;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::paths::{PathEvaluator, Prepared};
use crate::preprocess::resample_linear;
use crate::runtime::{SessionOptions, Sessions};

/// Settings of a policy run, saved as `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// The segmenter run.
    pub seg: PathBuf,
    /// Penalty per wrong voxel (paper: 50).
    pub tau: f64,
    /// Exploration bound α (0.8).
    pub alpha: f64,
    /// Entropy bonus β (0.1).
    pub beta: f64,
    /// Epochs per curriculum step E_c (10).
    pub curriculum_epochs: usize,
    /// Adam learning rate (1e-3).
    pub lr: f64,
    /// Volumes per step.
    pub batch: usize,
    /// Epochs.
    pub epochs: usize,
    /// Validate every this many epochs.
    pub val_every: usize,
    /// Seed.
    pub seed: u64,
    /// Keep threshold of the greedy path.
    pub threshold: f32,
    /// Tiles per ORT call.
    pub tile_batch: usize,
}

/// Checkpoint sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyMeta {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Blocks the curriculum forces to keep at this checkpoint (never trained yet); the saved policy
    /// keeps them whatever its output.
    pub forced: Vec<bool>,
    /// Validation: mean reward of the greedy path (the objective `best` is chosen by).
    pub val_reward: Option<f64>,
    /// Validation: mean Dice of the greedy path.
    pub val_dice: Option<f64>,
    /// Validation: mean fraction of blocks dropped.
    pub val_dropped: Option<f64>,
    /// Best validation reward so far.
    pub best_reward: Option<f64>,
    /// Epoch of the best.
    pub best_epoch: Option<usize>,
    /// Generator position.
    pub rng_word_pos: String,
}

/// One epoch, for progress and the log.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Total.
    pub epochs: usize,
    /// Blocks being learned.
    pub learned: usize,
    /// Mean reward of sampled paths.
    pub reward: f64,
    /// Mean advantage.
    pub advantage: f64,
    /// Mean blocks dropped by sampled paths.
    pub dropped: f64,
    /// Validation (greedy) reward, Dice and drop ratio, when validated.
    pub val_reward: Option<f64>,
    /// Validation Dice.
    pub val_dice: Option<f64>,
    /// Validation drop ratio.
    pub val_dropped: Option<f64>,
    /// Seconds.
    pub seconds: f64,
}

fn candle(e: candle_core::Error) -> Error {
    Error::invalid("policy training", e.to_string())
}

/// A policy with its variables.
pub struct PolicyModel {
    /// The network.
    pub net: PolicyNet,
    vars: SeededVarMap,
}

impl PolicyModel {
    fn new(spec: &ArchSpec, seed: u64) -> Result<Self> {
        let vars = SeededVarMap::new(seed ^ 0x9011c7);
        let net = PolicyNet::load(vars.var_builder(DType::F32, &Device::Cpu), spec).map_err(candle)?;
        Ok(PolicyModel { net, vars })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.named()
    }

    fn state(&self) -> Vec<(String, Var)> {
        checkpoint::state(&self.vars, &self.net)
    }

    fn tensors(&self) -> HashMap<String, Tensor> {
        checkpoint::tensors(self.state())
    }
}

/// Keep probabilities of a trained policy (evaluation mode) for a normalised volume, resampled to
/// the policy's input size exactly as the runtime does.
pub fn keep_probabilities(net: &PolicyNet, image: &Array3<f32>, input: [usize; 3]) -> Result<Vec<f32>> {
    let x = resample_linear(image, input);
    let t = Tensor::from_vec(x.into_raw_vec_and_offset().0, (1, 1, input[0], input[1], input[2]), &Device::Cpu)
        .map_err(candle)?;
    net.forward(&t, false).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(candle)
}

/// Makes the policy keep `forced` blocks whatever its input: their output logit becomes a constant
/// +30 (weight row 0). Exported graphs and evaluation then agree with what training learned.
pub fn force_keep(net: &PolicyNet, forced: &[bool]) -> Result<PolicyNet> {
    if !forced.iter().any(|&f| f) {
        return Ok(net.clone());
    }
    let w = net.fc.weight();
    let b = net.fc.bias().cloned().ok_or_else(|| Error::invalid("policy", "linear layer without bias"))?;
    let mask: Vec<f32> = forced.iter().map(|&f| if f { 0.0 } else { 1.0 }).collect();
    let m = Tensor::new(mask.as_slice(), w.device()).map_err(candle)?;
    let w = w.broadcast_mul(&m.unsqueeze(1).map_err(candle)?).map_err(candle)?;
    let add: Vec<f32> = forced.iter().map(|&f| if f { 30.0 } else { 0.0 }).collect();
    let b = ((b * &m).map_err(candle)? + Tensor::new(add.as_slice(), w.device()).map_err(candle)?).map_err(candle)?;
    let mut out = net.clone();
    out.fc = candle_nn::Linear::new(w, Some(b));
    Ok(out)
}

/// Loads a trained policy (`best` or `last`) with its curriculum forcing applied, and its config.
pub fn load_policy(run: &Path, which: &str) -> Result<(PolicyNet, PolicyConfig, PolicyMeta)> {
    let cfg: PolicyConfig = read_json(&run.join("config.json"))?;
    let (seg_cfg, _) = seg_config(&cfg.seg)?;
    let (tensors, meta): (HashMap<String, Tensor>, PolicyMeta) = checkpoint::load(run, which)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net = PolicyNet::load(vb, &seg_cfg.spec)
        .map_err(|e| Error::invalid("policy checkpoint", format!("{}: {e}", run.display())))?;
    let net = force_keep(&net, &meta.forced)?;
    Ok((net, cfg, meta))
}

fn seg_config(seg: &Path) -> Result<(TrainConfig, PathBuf)> {
    Ok((read_json(&seg.join("config.json"))?, seg.to_path_buf()))
}

/// A volume prepared for rewards.
struct Item {
    policy_input: Array3<f32>,
    prepared: Prepared,
}

/// Trains a policy into `out`.
pub fn train_policy(cfg: PolicyConfig, out: &Path, on_epoch: &dyn Fn(&PolicyEpoch)) -> Result<()> {
    if out.join("config.json").exists() {
        return Err(Error::invalid("--out", format!("{} already holds a run; use --resume", out.display())));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_json(&out.join("config.json"), &cfg)?;
    run(cfg, out, None, on_epoch)
}

/// Continues a policy run from `last`.
pub fn resume_policy(out: &Path, epochs: Option<usize>, on_epoch: &dyn Fn(&PolicyEpoch)) -> Result<()> {
    let mut cfg: PolicyConfig = read_json(&out.join("config.json"))?;
    if let Some(e) = epochs {
        cfg.epochs = e;
        write_json(&out.join("config.json"), &cfg)?;
    }
    let state = if out.join("last.json").exists() { Some(checkpoint::load::<PolicyMeta>(out, "last")?) } else { None };
    run(cfg, out, state, on_epoch)
}

fn run(
    cfg: PolicyConfig,
    out: &Path,
    state: Option<(HashMap<String, Tensor>, PolicyMeta)>,
    on_epoch: &dyn Fn(&PolicyEpoch),
) -> Result<()> {
    let (net, seg_cfg) = load_segmenter(&cfg.seg, "best")?;
    let spec = seg_cfg.spec.clone();
    let n_blocks = spec.num_blocks();
    // The frozen segmenter runs as its compiled graphs: fast, and exactly what will be deployed.
    let seg_bundle = out.join("segmenter");
    if !seg_bundle.join("manifest.json").exists() {
        crate::compile::compile(&net, &seg_cfg, None, None, &seg_bundle, true, true)?;
    }
    let bundle = Bundle::load(&seg_bundle)?;
    let mut sessions = Sessions::open(&bundle, &SessionOptions::default())?;
    let activation = bundle.manifest.input.activation;
    let mut evaluator = PathEvaluator::new(&mut sessions, seg_cfg.window, cfg.tile_batch, activation, 0.5);

    let dataset = Dataset::open(&seg_cfg.data, Some(seg_cfg.layout))?;
    let prep = seg_cfg.preprocessing;
    let mut load = |ids: &[String]| -> Result<Vec<Item>> {
        cases_by_id(&dataset, ids)?
            .iter()
            .map(|c| {
                let s = load_sample(c, &prep)?;
                let policy_input = resample_linear(&s.image, spec.policy.input);
                let prepared = evaluator.prepare(&s.image, s.record.pad_value, Some(s.labels))?;
                Ok(Item { policy_input, prepared })
            })
            .collect()
    };
    let train = load(&seg_cfg.train_ids)?;
    let val = load(&seg_cfg.val_ids)?;

    let model = PolicyModel::new(&spec, cfg.seed)?;
    let mut adam = Adam::new(model.trainable(), cfg.lr).map_err(candle)?;
    adam.lr = cfg.lr;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5a3);
    let mut meta = PolicyMeta {
        epoch: 0,
        steps: 0,
        forced: vec![true; n_blocks],
        val_reward: None,
        val_dice: None,
        val_dropped: None,
        best_reward: None,
        best_epoch: None,
        rng_word_pos: "0".into(),
    };
    if let Some((tensors, m)) = state {
        checkpoint::restore(&model.state(), &tensors, &out.join("last.safetensors"))?;
        adam.load_state(&|k| tensors.get(k).cloned(), m.steps).map_err(candle)?;
        rng.set_word_pos(m.rng_word_pos.parse().map_err(|_| Error::invalid("checkpoint", "bad generator position"))?);
        meta = m;
    }
    let d = spec.policy.input;
    let batch_input = |items: &[&Item]| -> Result<Tensor> {
        let mut v = Vec::with_capacity(items.len() * d.iter().product::<usize>());
        for it in items {
            v.extend(it.policy_input.iter().copied());
        }
        Tensor::from_vec(v, (items.len(), 1, d[0], d[1], d[2]), &Device::Cpu).map_err(candle)
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("log.jsonl"))
        .map_err(|e| Error::io(out.join("log.jsonl"), e))?;

    for epoch in meta.epoch..cfg.epochs {
        let t0 = Instant::now();
        let learned = learned_blocks(n_blocks, epoch, cfg.curriculum_epochs);
        let learned_t =
            Tensor::new(learned.iter().map(|&l| f32::from(u8::from(l))).collect::<Vec<_>>().as_slice(), &Device::Cpu)
                .map_err(candle)?;
        let mut order: Vec<usize> = (0..train.len()).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        let (mut r_sum, mut a_sum, mut drop_sum, mut count) = (0.0, 0.0, 0.0, 0usize);
        for chunk in order.chunks(cfg.batch.max(1)) {
            let items: Vec<&Item> = chunk.iter().map(|&i| &train[i]).collect();
            let p = model.net.forward(&batch_input(&items)?, true).map_err(candle)?;
            let pb = bounded(&p, cfg.alpha).map_err(candle)?;
            let (pv, pbv): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
                (p.to_vec2().map_err(candle)?, pb.to_vec2().map_err(candle)?);
            let mut actions = Vec::new();
            let mut advantages = Vec::new();
            for (b, item) in items.iter().enumerate() {
                let sampled: Vec<bool> =
                    (0..n_blocks).map(|n| !learned[n] || rng.random::<f32>() < pbv[b][n]).collect();
                let greedy: Vec<bool> = (0..n_blocks).map(|n| !learned[n] || pv[b][n] >= cfg.threshold).collect();
                let outcomes = evaluator.evaluate(&item.prepared, &[sampled.clone(), greedy.clone()], false)?;
                let kept = |m: &[bool]| m.iter().filter(|&&k| k).count();
                let rs = reward(outcomes[0].accuracy, kept(&sampled), n_blocks, cfg.tau);
                let rg = reward(outcomes[1].accuracy, kept(&greedy), n_blocks, cfg.tau);
                advantages.push((rs - rg) as f32);
                actions.extend(sampled.iter().map(|&k| f32::from(u8::from(k))));
                r_sum += rs;
                a_sum += rs - rg;
                drop_sum += (n_blocks - kept(&sampled)) as f64;
                count += 1;
            }
            let actions = Tensor::from_vec(actions, (items.len(), n_blocks), &Device::Cpu).map_err(candle)?;
            let adv = Tensor::from_vec(advantages, items.len(), &Device::Cpu).map_err(candle)?;
            let loss = reinforce_loss(&pb, &actions, &adv, &learned_t, cfg.beta).map_err(candle)?;
            adam.step(&loss.backward().map_err(candle)?).map_err(candle)?;
        }
        let done = epoch + 1;
        meta.epoch = done;
        meta.steps = adam.steps();
        meta.forced = learned.iter().map(|&l| !l).collect();
        meta.rng_word_pos = rng.get_word_pos().to_string();
        let validate = done % cfg.val_every.max(1) == 0 || done == cfg.epochs;
        let (mut vr, mut vd, mut vdrop) = (None, None, None);
        if validate {
            // The policy as it would be deployed: evaluation-mode BatchNorm, forced blocks kept.
            let deployed = force_keep(&model.net, &meta.forced)?;
            let (mut rsum, mut dsum, mut dropped) = (0.0, 0.0, 0.0);
            for item in &val {
                let p: Vec<f32> = deployed
                    .forward(&batch_input(&[item])?, false)
                    .and_then(|p| p.flatten_all())
                    .and_then(|p| p.to_vec1())
                    .map_err(candle)?;
                let greedy: Vec<bool> = p.iter().map(|&v| v >= cfg.threshold).collect();
                let o = &evaluator.evaluate(&item.prepared, std::slice::from_ref(&greedy), false)?[0];
                let kept = greedy.iter().filter(|&&k| k).count();
                rsum += reward(o.accuracy, kept, n_blocks, cfg.tau);
                dsum += o.dice;
                dropped += (n_blocks - kept) as f64 / n_blocks as f64;
            }
            let nv = val.len().max(1) as f64;
            (vr, vd, vdrop) = (Some(rsum / nv), Some(dsum / nv), Some(dropped / nv));
            meta.val_reward = vr;
            meta.val_dice = vd;
            meta.val_dropped = vdrop;
            if meta.best_reward.is_none_or(|b| rsum / nv > b) {
                meta.best_reward = vr;
                meta.best_epoch = Some(done);
                checkpoint::save(out, "best", &model.tensors(), &meta)?;
            }
        }
        let mut tensors = model.tensors();
        tensors.extend(adam.state());
        checkpoint::save(out, "last", &tensors, &meta)?;
        let c = count.max(1) as f64;
        let report = PolicyEpoch {
            epoch: done,
            epochs: cfg.epochs,
            learned: learned.iter().filter(|&&l| l).count(),
            reward: r_sum / c,
            advantage: a_sum / c,
            dropped: drop_sum / c,
            val_reward: vr,
            val_dice: vd,
            val_dropped: vdrop,
            seconds: t0.elapsed().as_secs_f64(),
        };
        writeln!(log, "{}", serde_json::to_string(&report).map_err(|e| Error::invalid("log", e.to_string()))?)
            .map_err(|e| Error::io(out.join("log.jsonl"), e))?;
        on_epoch(&report);
    }
    Ok(())
}
