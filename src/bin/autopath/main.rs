//! `autopath`: synthesise data, train, evaluate, compile and benchmark.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use autopath::cli::{progress, report};
use autopath::input::preprocess::LabelMapping;
use autopath::input::window::WindowConfig;
use autopath::study::dataset::Dataset;
use autopath::study::synth::{synthesize, SynthConfig};
use autopath::study::train::device::DeviceChoice;
use autopath::study::train::segment::{self, plan_split, CaseSplit, TrainConfig};
use autopath_models::spec::{ArchSpec, Output};

mod args;

use args::*;

fn train_policy(args: PolicyArgs, quiet: bool) -> anyhow::Result<()> {
    use autopath::study::train::policy::{resume_policy, train_policy, PolicyConfig, PolicyEpoch};
    let bar = progress(0, "policy", quiet);
    let on_epoch = |r: &PolicyEpoch| {
        bar.set_length(r.epochs as u64);
        bar.set_position(r.epoch as u64);
        let val = r
            .val_dice
            .map(|d| format!(" | val Dice {d:.4} dropped {:.0} %", 100.0 * r.val_dropped.unwrap_or(0.0)))
            .unwrap_or_default();
        // The paper's method reports its mean sampled reward, ours its cross-entropy.
        let train = match r.loss {
            Some(l) => format!("loss {l:.4}"),
            None => format!("reward {:.4}", r.reward),
        };
        bar.set_message(format!("learning {} blocks, {train}{val}", r.learned));
        if (quiet || bar.is_hidden()) && r.val_dice.is_some() {
            eprintln!(
                "epoch {}/{}: learning {} blocks, {train}, val score {:.4}, val Dice {:.4}, dropped {:.1} %",
                r.epoch,
                r.epochs,
                r.learned,
                r.val_reward.unwrap_or(f64::NAN),
                r.val_dice.unwrap_or(f64::NAN),
                100.0 * r.val_dropped.unwrap_or(0.0)
            );
        }
    };
    let device = open_device(args.device)?;
    let out = if let Some(run) = args.resume {
        resume_policy(&run, args.epochs, &device, &args.provider.options(args.tile_batch), &on_epoch)?;
        run
    } else {
        let seg = args.seg.expect("required");
        let out = args.out.expect("required");
        let spec: autopath::study::train::segment::TrainConfig =
            autopath::study::train::checkpoint::read_json(&seg.join("config.json"))?;
        let n = spec.spec.num_blocks();
        let cfg = PolicyConfig {
            seg: std::path::absolute(&seg)?,
            method: match args.method {
                MethodArg::Paper => autopath::study::train::policy::Method::Paper,
                MethodArg::Distil => autopath::study::train::policy::Method::Distil,
            },
            dice_tolerance: args.dice_tolerance,
            tau: args.tau,
            alpha: args.alpha,
            beta: args.beta,
            curriculum_epochs: args.curriculum_epochs.max(1),
            lr: args.lr,
            batch: args.batch.max(1),
            epochs: args.epochs.unwrap_or(match args.method {
                MethodArg::Paper => n * args.curriculum_epochs.max(1) + 20,
                MethodArg::Distil => autopath::study::train::policy::DISTIL_EPOCHS,
            }),
            val_every: args.val_every,
            seed: args.seed,
            threshold: args.threshold,
            calibrate_threshold: args.calibrate_threshold,
            guard: !args.no_guard,
            tile_batch: args.tile_batch,
        };
        train_policy(cfg, &out, &device, &args.provider.options(args.tile_batch), &on_epoch)?;
        out
    };
    bar.finish_and_clear();
    print_policy_summary(&out)
}

/// The trained policy's best checkpoint in one line, and the validation guard's cap if it applied.
fn print_policy_summary(out: &std::path::Path) -> anyhow::Result<()> {
    use autopath::study::train::policy::PolicyConfig;
    let meta: autopath::study::train::policy::PolicyMeta =
        autopath::study::train::checkpoint::read_json(&out.join("best.json"))?;
    let cfg: PolicyConfig = autopath::study::train::checkpoint::read_json(&out.join("config.json"))?;
    println!(
        "policy trained: best validation score {:.4} at epoch {} (Dice {:.4}, {:.1} % of blocks dropped, keep threshold {}{}); checkpoints in {}",
        meta.best_reward.unwrap_or(f64::NAN),
        meta.best_epoch.unwrap_or(0),
        meta.val_dice.unwrap_or(f64::NAN),
        100.0 * meta.val_dropped.unwrap_or(0.0),
        meta.deployed_threshold(&cfg),
        if meta.threshold.is_some() { ", chosen on validation" } else { "" },
        out.display()
    );
    let forced = meta.forced.iter().filter(|&&f| f).count();
    if cfg.method == autopath::study::train::policy::Method::Distil && !meta.source.is_empty() {
        println!(
            "validation guard: the policy scored below the full network on the validation volumes; it is shifted back along its drop order by {forced} (each volume drops {forced} fewer of the order's blocks than the policy says; the order's last {forced} are always kept)"
        );
    } else if cfg.method == autopath::study::train::policy::Method::Distil && forced > 0 {
        println!(
            "validation guard: the policy scored below the full network on the validation volumes; {forced} of {} blocks are kept whatever it says (those past the deepest drop-order prefix the validation volumes tolerate on average)",
            meta.forced.len()
        );
    }
    Ok(())
}

fn step_time(args: StepTimeArgs) -> anyhow::Result<()> {
    autopath_models::ops::set_avx2_only(args.avx2_only);
    let device = open_device(args.device)?;
    let precision = args.precision.into();
    autopath::study::train::device::check_precision(&device, precision)?;
    autopath_models::ops::set_precision(precision);
    let mut spec = ArchSpec::preset(&args.arch, args.width, args.patch)
        .ok_or_else(|| anyhow::anyhow!("invalid --arch {}: expected r18, r34 or r50", args.arch))?;
    spec.decoder = args.decoder.into();
    let t = autopath::study::train::device_check::time_step(&spec, args.batch, args.repeats, &device)?;
    let [d, h, w] = args.patch;
    println!(
        "{} width {} {}×{}×{} batch {} on {}: step {:.1} ms = forward {:.1} + loss {:.1} + backward {:.1} + Adam {:.1} (backward/forward {:.2})",
        args.arch, args.width, d, h, w, args.batch, if device.is_cpu() { "cpu" } else { "cuda" },
        t.total, t.forward, t.loss, t.backward, t.optimizer, t.backward / t.forward
    );
    if let Some(path) = args.json {
        autopath::study::train::checkpoint::write_json(&path, &t)?;
    }
    Ok(())
}

fn device_check(args: DeviceCheckArgs) -> anyhow::Result<()> {
    use autopath::study::train::device_check::{DeviceReport, TimedStep};
    let device = open_device(args.device)?;
    let timed = args.time_patch.map(|patch| TimedStep { patch, width: args.time_width, batch: args.time_batch });
    let report = DeviceReport::run(&device, args.steps, timed)?;
    print!("{}", report.table());
    if let Some(path) = args.json {
        autopath::study::train::checkpoint::write_json(&path, &report)?;
    }
    let failed = report.failed();
    anyhow::ensure!(failed.is_empty(), "device check failed: {}", failed.join(", "));
    Ok(())
}

/// Opens the Candle device and says which one was chosen.
fn open_device(choice: Option<DeviceChoice>) -> anyhow::Result<candle_core::Device> {
    let (device, why) = autopath::study::train::device::open(choice)?;
    eprintln!("device: {why}");
    Ok(device)
}

fn train(args: TrainArgs, quiet: bool) -> anyhow::Result<()> {
    let bar = progress(0, "train", quiet);
    let on_epoch = |r: &segment::EpochReport| {
        bar.set_length(r.epochs as u64);
        bar.set_position(r.epoch as u64);
        let val = r.val_dice.map(|d| format!(" val Dice {d:.4}")).unwrap_or_default();
        bar.set_message(format!("loss {:.4}{val}", r.loss));
        if quiet || bar.is_hidden() {
            if let Some(d) = r.val_dice {
                eprintln!("epoch {}/{}: loss {:.4}, val Dice {d:.4}, {:.1} s", r.epoch, r.epochs, r.loss, r.seconds);
            }
        }
    };
    let device = open_device(args.device)?;
    autopath::study::train::device::check_precision(&device, args.precision.into())?;
    let (summary, out) = if let Some(run) = args.resume {
        (segment::resume(&run, args.epochs, &device, &on_epoch)?, run)
    } else {
        let data = args.data;
        let folder = data.data.clone().ok_or_else(|| anyhow::anyhow!("--data is required (or --resume RUN)"))?;
        let out = args.out.ok_or_else(|| anyhow::anyhow!("--out is required (or --resume RUN)"))?;
        let mut spec = ArchSpec::preset(&args.arch, args.width, args.patch)
            .ok_or_else(|| anyhow::anyhow!("unknown --arch {}", args.arch))?;
        spec.decoder = args.decoder.into();
        let prep = data.preprocessing();
        if prep.labels == LabelMapping::Keep {
            spec.output = Output::Softmax { classes: 3 };
        }
        let dataset = Dataset::open(&folder, data.layout.map(Into::into))?;
        let (train_ids, val_ids, test_ids) = plan_split(&dataset, &data.split()?, args.val_cases, data.seed)?;
        let split = CaseSplit { train: train_ids, val: val_ids, test: test_ids };
        let mut prep = prep;
        let train_cases: Vec<_> = dataset.cases.iter().filter(|c| split.train.contains(&c.id)).cloned().collect();
        prep.target_spacing = args.spacing.target(&train_cases)?;
        if let Some(s) = prep.target_spacing {
            eprintln!("target spacing {:.3},{:.3},{:.3} mm (D,H,W; --spacing {:?})", s[0], s[1], s[2], args.spacing);
        }
        let (labels, modality) = names(&folder, &args.label_names, args.modality.clone(), &prep, &spec)?;
        let base = TrainConfig::new(spec, std::path::absolute(&folder)?, dataset.layout, split);
        let cfg = TrainConfig {
            preprocessing: prep,
            labels,
            modality,
            window: WindowConfig { overlap: args.overlap, ..base.window },
            epochs: args.epochs.unwrap_or(base.epochs),
            batch: args.batch.max(1),
            lr: args.lr,
            lr_step: args.lr_step,
            lr_gamma: args.lr_gamma,
            val_every: args.val_every,
            foreground_fraction: args.foreground_fraction,
            seed: data.seed,
            tile_batch: args.tile_batch,
            drop_path: args.drop_path,
            precision: args.precision.into(),
            ..base
        };
        (segment::train(cfg, &out, &device, &on_epoch)?, out)
    };
    bar.finish_and_clear();
    println!(
        "trained {} epochs in {:.0} s; best validation Dice {} (epoch {}); checkpoints in {}",
        summary.epochs,
        summary.seconds,
        summary.best_dice.map_or("-".into(), |d| format!("{d:.4}")),
        summary.best_epoch.map_or("-".into(), |e| e.to_string()),
        out.display()
    );
    Ok(())
}

/// The bundle's label names and modality: from the flags, else the data set's dataset.json, else the
/// defaults (empty names, no modality).
fn names(
    folder: &std::path::Path,
    flags: &Option<Vec<String>>,
    modality: Option<String>,
    prep: &autopath::input::preprocess::Preprocessing,
    spec: &ArchSpec,
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let described = autopath::study::dataset::Description::read(folder)?;
    let given = flags.clone().map(|labels| autopath::study::dataset::Description { labels, modality: None });
    let modality = modality.or_else(|| described.as_ref().and_then(|d| d.modality.clone()));
    let Some(d) = given.or(described) else { return Ok((Vec::new(), modality)) };
    let classes = match spec.output {
        Output::Softmax { classes } => classes,
        _ => 2,
    };
    let labels = d.output_labels(prep.labels == LabelMapping::Merge, classes)?;
    Ok((labels, modality))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => synth(args, cli.quiet),
        Command::Train(args) => train(args, cli.quiet),
        Command::Demo(args) => demo(args),
        Command::TrainPolicy(args) => train_policy(args, cli.quiet),
        Command::DeviceCheck(args) => device_check(args),
        Command::StepTime(args) => step_time(args),
        Command::Bench(args) => bench(args),
        Command::Eval(args) => eval(args, cli.quiet),
        Command::Compile(args) => compile(args),
        Command::Inspect { bundle, json, tile_batch } => inspect(&bundle, json, tile_batch),
    }
}

fn synth(args: SynthArgs, quiet: bool) -> anyhow::Result<()> {
    let SynthArgs { out, cases, seed, size, family, max_difficulty } = args;
    let family = if family == "mr" { autopath::study::synth::Family::Mr } else { autopath::study::synth::Family::Ct };
    let cfg = SynthConfig { cases, seed, size, family, max_difficulty };
    let bar = progress(cases as u64, "synth", quiet);
    let infos = synthesize(&out, &cfg, &|done| bar.set_position(done as u64))
        .with_context(|| format!("synthesising into {}", out.display()))?;
    bar.finish_and_clear();
    let mean_liver = infos.iter().map(|i| i.liver_fraction).sum::<f32>() / infos.len() as f32;
    println!(
        "wrote {} phantoms of {:?} to {} (mean liver fraction {:.3})",
        infos.len(),
        size,
        out.display(),
        mean_liver
    );
    Ok(())
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    use autopath::study::demo::{run, DemoOptions};
    let out = args.out.clone();
    let mut o = if args.quick { DemoOptions::quick(out.clone()) } else { DemoOptions::standard(out.clone()) };
    o.fresh = args.fresh;
    o.device = open_device(args.device)?;
    o.cases = args.cases.unwrap_or(o.cases);
    o.size = args.size.unwrap_or(o.size);
    o.patch = args.patch.unwrap_or(o.patch);
    o.epochs = args.epochs.unwrap_or(o.epochs);
    o.width = args.width.unwrap_or(o.width);
    o.policy_epochs = args.policy_epochs.unwrap_or(o.policy_epochs);
    o.policy_batch = args.policy_batch.unwrap_or(o.policy_batch).max(1);
    o.curriculum_epochs = args.curriculum_epochs.unwrap_or(o.curriculum_epochs);
    o.drop_path = args.drop_path.unwrap_or(o.drop_path);
    o.decoder = args.decoder.map_or(o.decoder, Into::into);
    o.tau = args.tau.unwrap_or(o.tau);
    o.random_repeats = args.random_repeats.unwrap_or(o.random_repeats);
    o.seed = args.seed.unwrap_or(o.seed);
    if args.family == "mr" {
        o.family = autopath::study::synth::Family::Mr;
    }
    o.max_difficulty = args.max_difficulty.unwrap_or(o.max_difficulty);
    o.precision = args.precision.into();
    let t = std::time::Instant::now();
    if let Some(seeds) = args.seeds {
        return demo_seeds(o, &seeds, t);
    }
    let r = run(&o, &|line| eprintln!("{line}"))?;
    println!("\nTable 1 (test volumes {}):\n{}", r.eval.test_ids.join(", "), r.eval.table1_text());
    println!("Latency (CPU, ONNX Runtime):\n{}", autopath::study::bench::markdown(&r.bench));
    println!("report:        {}", out.join("eval/report.md").display());
    println!("figures:       {}", out.join("eval").display());
    println!("bundle:        {}", out.join("bundle").display());
    println!("segmentations: {}", out.join("segmentations").display());
    println!("benchmark:     {}", out.join("bench/bench.md").display());
    println!("demo finished in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// `demo --seeds`: one demo per seed in OUT/seed-S, then the seeds table.
fn demo_seeds(o: autopath::study::demo::DemoOptions, seeds: &[u64], t: std::time::Instant) -> anyhow::Result<()> {
    use autopath::study::seeds::{markdown, row, BARS};
    let out = o.out.clone();
    let mut rows = Vec::new();
    for &seed in seeds {
        let mut s = autopath::study::demo::DemoOptions { seed, out: out.join(format!("seed-{seed}")), ..o.clone() };
        s.device = o.device.clone();
        let r = autopath::study::demo::run(&s, &move |line| eprintln!("[seed {seed}] {line}"))?;
        println!("\nTable 1, seed {seed} (test volumes {}):\n{}", r.eval.test_ids.join(", "), r.eval.table1_text());
        rows.extend(row(seed, &r.eval, BARS));
    }
    let table = markdown(&rows, BARS);
    std::fs::write(out.join("seeds.md"), &table)?;
    std::fs::write(out.join("seeds.json"), serde_json::to_string_pretty(&rows)?)?;
    println!("\nSeeds ({}):\n{table}", out.join("seeds.md").display());
    println!("demo finished in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { bundle, data, limit, provider, repeats, warmup, tile_batch, out, calibrate } = args;
    if calibrate {
        use autopath::study::calibrate;
        let cost = calibrate::calibrate(&bundle, &provider.options(tile_batch), tile_batch, warmup, repeats)?;
        let arch = autopath_bundle::Bundle::load(&bundle)?.manifest.architecture;
        let table = calibrate::markdown(&cost, &arch);
        std::fs::create_dir_all(&out)?;
        autopath::atomic::write_bytes_atomically(
            &out.join("cost.json"),
            serde_json::to_string_pretty(&cost)?.as_bytes(),
        )?;
        autopath::atomic::write_bytes_atomically(&out.join("cost.md"), table.as_bytes())?;
        println!("{table}\nwrote {} (for autopath compile --cost)", out.join("cost.json").display());
        return Ok(());
    }
    anyhow::ensure!(!data.is_empty(), "--data is required (or --calibrate)");
    let inputs = autopath::study::bench::inputs(&data, limit)?;
    let opts =
        autopath::study::bench::BenchOptions { repeats, warmup, session: provider.options(tile_batch), tile_batch };
    let report = autopath::study::bench::bench(&bundle, &inputs, &out, &opts)?;
    autopath::study::bench::write(&out, &report)?;
    println!("{}", autopath::study::bench::markdown(&report));
    Ok(())
}

/// A cost table from `autopath bench --calibrate` (`--cost`).
fn read_cost(p: &std::path::Path) -> anyhow::Result<autopath_bundle::MeasuredCost> {
    let text = std::fs::read_to_string(p).with_context(|| format!("--cost {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("--cost {}", p.display()))
}

fn eval(args: EvalArgs, quiet: bool) -> anyhow::Result<()> {
    let EvalArgs { seg, policy, out, random_repeats, seed, tile_batch, workers, provider, cost } = args;
    let cost = cost.map(|p| read_cost(&p)).transpose()?;
    let opts = autopath::study::eval::EvalOptions {
        seg,
        policies: policy,
        out: out.clone(),
        random_repeats,
        seed,
        tile_batch,
        workers,
        session: provider.options(tile_batch),
        cost,
    };
    let bar = progress(0, "eval", quiet);
    let r = autopath::study::eval::evaluate(&opts, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("{}", r.table1_text());
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let CompileArgs {
        seg,
        untrained,
        width,
        patch,
        decoder,
        policy,
        evaluation,
        checkpoint,
        out,
        force,
        no_verify,
        conv3d,
        path_graphs,
        cost,
        stem,
        precision,
    } = args;
    let cost = cost.map(|p| read_cost(&p)).transpose()?;
    let opts = autopath::study::compile::CompileOptions {
        verify: !no_verify,
        force,
        conv: conv3d.into(),
        split_head: false,
        path_graphs,
        cost,
        stem: stem.into(),
        precision: precision.into(),
    };
    if let Some(arch) = untrained {
        let decoder = decoder.into();
        let report = autopath::study::compile::compile_untrained(&arch, width, patch, decoder, &out, opts)?;
        println!(
            "compiled an untrained {arch} (width {width}, {decoder:?} decoder, tile {patch:?}): {} graphs into {} in {:.1} s",
            report.files,
            out.display(),
            report.seconds
        );
        return Ok(());
    }
    let seg = seg.ok_or_else(|| anyhow::anyhow!("--seg is required (or --untrained ARCH)"))?;
    let report = autopath::study::packaging::compile_runs(
        &seg,
        &checkpoint,
        policy.as_deref(),
        evaluation.as_deref(),
        &out,
        opts,
    )?;
    for c in &report.checks {
        println!("  {}  {}", c.describe(), if c.passed { "ok" } else { "FAILED" });
    }
    println!(
        "compiled {} graphs into {} in {:.1} s: {:.1} MB ({:.2}x the {:.1} MB of fp32 weights)",
        report.files,
        out.display(),
        report.seconds,
        report.bundle_bytes as f64 / 1e6,
        report.bundle_bytes as f64 / report.weight_bytes as f64,
        report.weight_bytes as f64 / 1e6
    );
    Ok(())
}

fn inspect(dir: &std::path::Path, json: bool, tile_batch: usize) -> anyhow::Result<()> {
    let b = autopath_bundle::Bundle::load(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&b.manifest)?);
    } else {
        print!("{}", autopath::deploy::inspect::describe(&b, tile_batch));
    }
    Ok(())
}

fn main() -> ExitCode {
    autopath::deploy::heap::keep_freed_buffers();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}
