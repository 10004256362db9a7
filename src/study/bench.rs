//! `autopath bench`: latency of AutoPath against the full backbone with the runtime's own code:
//! (a) `full.onnx`, (b) the block chain with every block kept, (c) policy + chain of the kept blocks;
//! network only (tiles in, probabilities out) and end to end (read to write).

use autopath_bundle::PathCost;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::deploy::predict::{peak_rss_mb, reset_peak_rss};
use crate::deploy::{ExecutionProvider, PathChoice, Predictor, PredictorOptions, Route, SessionOptions};
use crate::error::{Error, Result};
use crate::input::volume::{read_volume, ReadOptions};

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed repeats.
    pub repeats: usize,
    /// Untimed warm-up runs.
    pub warmup: usize,
    /// Session options (EP, threads).
    pub session: SessionOptions,
    /// Tiles per network call.
    pub tile_batch: usize,
}

/// Order statistics of a set of timings, seconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Timing {
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Fastest.
    pub min: f64,
    /// Every sample.
    pub samples: Vec<f64>,
}

impl Timing {
    fn of(mut v: Vec<f64>) -> Timing {
        let samples = v.clone();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize];
        Timing { median: q(0.5), p90: q(0.9), min: v[0], samples }
    }
    /// Spread between min and p90, relative to the median.
    pub fn spread(&self) -> f64 {
        (self.p90 - self.min) / self.median
    }
}

/// One volume's measurements.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VolumeBench {
    /// Input file.
    pub input: String,
    /// Shape `[D, H, W]`.
    pub shape: [usize; 3],
    /// Tiles per pass.
    pub tiles: usize,
    /// AutoPath keep mask.
    pub keep: String,
    /// FLOP fraction of the AutoPath path.
    pub flop_fraction: f64,
    /// (a) full.onnx over the volume's sliding window: tiling, the network calls and blending.
    pub full_graph: Timing,
    /// (b) the chain with every block kept, the same window.
    pub chain_all: Timing,
    /// (c) the AutoPath chain, the same window (policy excluded).
    pub autopath: Timing,
    /// The network calls alone within (a): what dropping blocks can save.
    #[serde(default)]
    pub full_network: Timing,
    /// The network calls alone within (c).
    #[serde(default)]
    pub autopath_network: Timing,
    /// Policy alone (downsampling included).
    pub policy: Timing,
    /// AutoPath's path through the chain of block graphs, network calls only (against
    /// `autopath_network`, which takes the whole-path graph where the bundle has one).
    #[serde(default)]
    pub autopath_chain_network: Timing,
    /// Host work (read, stitch, write) over network time in AutoPath's end-to-end runs, median.
    #[serde(default)]
    pub host_share: f64,
    /// (a) end to end, read to write.
    pub full_e2e: Timing,
    /// (c) end to end, read to write (policy included).
    pub autopath_e2e: Timing,
}

/// Aggregates over volumes.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BenchSummary {
    /// Mean of (a)/(c) sliding-window medians.
    pub speedup: f64,
    /// Mean of (a)/(c) medians of the network calls alone.
    #[serde(default)]
    pub speedup_network: f64,
    /// Mean of (a)/(c) end-to-end medians.
    pub speedup_e2e: f64,
    /// Mean of (b)/(a): what splitting into per-block sessions costs.
    pub chain_overhead: f64,
    /// Mean FLOP fraction of the AutoPath paths.
    pub flop_fraction: f64,
    /// Network-time saving of (c) vs (a) divided by its FLOP saving (1 = every FLOP saved is time saved);
    /// None when the policy kept every block (no FLOPs saved to divide by; NaN would not survive JSON).
    pub saving_ratio: Option<f64>,
    /// Policy time relative to (a).
    pub policy_share: f64,
    /// Largest relative spread (p90 − min)/median over all timings.
    pub max_spread: f64,
    /// Peak resident memory since the benchmark started, MB (the process's whole life where the kernel
    /// cannot restart the count).
    pub peak_rss_mb: f64,
    /// Mean over volumes of AutoPath's network time through the chain over its time through the graph
    /// it runs (the whole-path graph where there is one; 1 where it is the chain).
    #[serde(default)]
    pub path_graph_gain: f64,
    /// Mean host share (read, stitch, write over network) of AutoPath's end-to-end runs.
    #[serde(default)]
    pub host_share: f64,
}

/// Where and how a benchmark ran: timings mean little without it. Fields missing in reports of older
/// versions read as defaults.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Environment {
    /// CPU model name.
    pub cpu: String,
    /// Cores available to the process.
    pub cores: usize,
    /// Threads of ONNX Runtime's pool (None: its default).
    pub threads: Option<usize>,
    /// Execution provider asked for.
    pub ep: ExecutionProvider,
    /// Where the chain's values live between blocks.
    pub chain_values: String,
    /// CUDA settings that change the numbers: TF32 math and channels-last convolutions (empty on the
    /// CPU provider).
    #[serde(default)]
    pub cuda_math: String,
    /// ONNX Runtime version.
    pub onnx_runtime: String,
    /// The bundle's manifest hash.
    pub bundle_sha256: String,
    /// Tile shape.
    pub tile: [usize; 3],
    /// Tiles per network call.
    pub tile_batch: usize,
    /// Timed repeats per measurement.
    pub repeats: usize,
    /// Warm-up runs.
    pub warmup: usize,
}

/// The report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BenchReport {
    /// Machine and software.
    pub environment: Environment,
    /// Per volume.
    pub volumes: Vec<VolumeBench>,
    /// Aggregates.
    pub summary: BenchSummary,
    /// The inputs as one folder run, full against AutoPath (absent in reports made before it was measured).
    #[serde(default)]
    pub folder: FolderThroughput,
}

/// Volumes per second of a folder run (`autopath-run -i folder`), several volumes in flight, with
/// `full.onnx` and with the policy's paths; the best of alternating runs.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FolderThroughput {
    /// Volumes in the folder.
    pub volumes: usize,
    /// Volumes in flight.
    pub prefetch: usize,
    /// Runs of each.
    pub runs: usize,
    /// Volumes per second with `full.onnx`.
    pub full_volumes_per_second: f64,
    /// Volumes per second with the policy's paths.
    pub autopath_volumes_per_second: f64,
    /// AutoPath's throughput over full's.
    pub gain: f64,
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

/// `TF32 on, NHWC off` under CUDA, empty elsewhere.
fn cuda_math(o: &SessionOptions) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    match o.ep {
        ExecutionProvider::Cpu => String::new(),
        _ => format!("TF32 {}, NHWC {}", on(o.tf32), on(o.prefer_nhwc)),
    }
}

/// The processor's model name (Linux), `unknown` elsewhere.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Benchmarks `inputs` with the bundle in `bundle`; temporary outputs go to `scratch`.
pub fn bench(bundle: &Path, inputs: &[PathBuf], scratch: &Path, opts: &BenchOptions) -> Result<BenchReport> {
    if inputs.is_empty() {
        return Err(Error::invalid("--data", "no volumes to benchmark"));
    }
    if opts.repeats == 0 {
        return Err(Error::invalid("--repeats", "must be at least 1 (medians of no runs do not exist)"));
    }
    reset_peak_rss();
    let popts = PredictorOptions { session: opts.session.clone(), tile_batch: opts.tile_batch, ..Default::default() };
    let p = Predictor::from_bundle(bundle, &popts)?;
    std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch, e))?;
    let volumes = inputs.iter().map(|input| bench_volume(&p, input, scratch, opts)).collect::<Result<Vec<_>>>()?;
    let summary = summarize(&volumes);
    let folder = folder_throughput(&p, inputs, scratch, opts)?;
    let environment = Environment {
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        threads: opts.session.threads,
        ep: opts.session.ep,
        chain_values: format!("{:?}", p.residency()),
        cuda_math: cuda_math(&opts.session),
        onnx_runtime: crate::deploy::ort_library::ORT_VERSION.into(),
        bundle_sha256: p.bundle().hash.clone(),
        tile: p.window().patch,
        tile_batch: p.tile_batch(),
        repeats: opts.repeats,
        warmup: opts.warmup,
    };
    Ok(BenchReport { environment, volumes, summary, folder })
}

/// Times one volume: (a) full.onnx, (b) the chain with every block, (c) the policy's path, the policy
/// alone, and both end to end; medians after `opts.warmup` runs.
fn bench_volume(p: &Predictor, input: &Path, scratch: &Path, opts: &BenchOptions) -> Result<VolumeBench> {
    let n = p.num_blocks();
    let vol = read_volume(input, &ReadOptions::default())?;
    let (image, rec) = p.preprocess(&vol)?;
    let (keep, _) = p.keep_mask(&image, &PathChoice::Auto { threshold: None })?;
    let all = vec![true; n];
    let mut samples: [Vec<f64>; 9] = Default::default();
    let mut host_shares = Vec::new();
    let mut tiles = 0;
    let out = scratch.join("bench_out.nii.gz");
    for i in 0..opts.warmup + opts.repeats {
        let (a, (_, t, a_net)) = time(|| p.probabilities(&image, rec.pad_value, &Route::Full))?;
        let (b, _) = time(|| p.probabilities(&image, rec.pad_value, &Route::Blocks(all.clone())))?;
        let (c, (_, _, c_net)) = time(|| p.probabilities(&image, rec.pad_value, &Route::Chain(keep.clone())))?;
        let (_, (_, _, cb_net)) = time(|| p.probabilities(&image, rec.pad_value, &Route::Blocks(keep.clone())))?;
        let (pol, _) = time(|| p.keep_mask(&image, &PathChoice::Auto { threshold: None }))?;
        let (ae, _) = time(|| p.segment_file(input, &out, &PathChoice::FullGraph))?;
        let (ce, report) = time(|| p.segment_file(input, &out, &PathChoice::Auto { threshold: None }))?;
        tiles = t;
        if i >= opts.warmup {
            let st = &report.seconds;
            host_shares.push((st.read + st.stitch + st.write) / st.network.max(1e-9));
            for (s, v) in samples.iter_mut().zip([a, b, c, pol, ae, ce, a_net, c_net, cb_net]) {
                s.push(v);
            }
        }
    }
    let _ = std::fs::remove_file(&out);
    let [a, b, c, pol, ae, ce, a_net, c_net, cb_net] = samples.map(Timing::of);
    let host_share = Timing::of(host_shares).median;
    Ok(VolumeBench {
        input: input.display().to_string(),
        shape: vol.geometry.shape,
        tiles,
        keep: crate::labels::mask_text(&keep),
        flop_fraction: p.bundle().manifest.architecture.flop_fraction(&keep),
        full_graph: a,
        chain_all: b,
        autopath: c,
        full_network: a_net,
        autopath_network: c_net,
        policy: pol,
        full_e2e: ae,
        autopath_e2e: ce,
        autopath_chain_network: cb_net,
        host_share,
    })
}

/// The inputs as one folder run, `full.onnx` and AutoPath alternating, at the default number of
/// volumes in flight; the best of up to 3 runs each.
fn folder_throughput(
    p: &Predictor,
    inputs: &[PathBuf],
    scratch: &Path,
    opts: &BenchOptions,
) -> Result<FolderThroughput> {
    use crate::deploy::batch::{default_prefetch, run_batch, BatchOptions};
    use crate::input::source::{OutputType, Source};
    let folder = scratch.join("folder");
    let pairs: Vec<(Source, PathBuf)> = inputs
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (Source::Nifti(f.clone()), folder.join(format!("{i}-{name}")))
        })
        .collect();
    crate::deploy::batch::check_outputs(&pairs, OutputType::Nifti)?;
    let classes = p.bundle().manifest.input.activation.channels();
    let gpu = p.providers().iter().any(|&e| e != crate::deploy::ExecutionProvider::Cpu);
    let prefetch = default_prefetch(&pairs, p.read_options(), classes, gpu);
    let batch = BatchOptions { skip_existing: false, prefetch };
    let runs = opts.repeats.clamp(1, 3);
    let (mut full, mut autopath, mut in_flight) = (0.0f64, 0.0f64, prefetch);
    for _ in 0..runs {
        for (choice, best) in
            [(PathChoice::FullGraph, &mut full), (PathChoice::Auto { threshold: None }, &mut autopath)]
        {
            let s = run_batch(p, &pairs, &choice, batch, None, &mut |_| {})?;
            if s.failed > 0 {
                return Err(Error::invalid("bench", format!("{} of the folder's volumes failed", s.failed)));
            }
            *best = best.max(s.segmented as f64 / s.wall_seconds.max(1e-9));
            in_flight = s.prefetch;
        }
    }
    let _ = std::fs::remove_dir_all(&folder);
    Ok(FolderThroughput {
        volumes: pairs.len(),
        prefetch: in_flight,
        runs,
        full_volumes_per_second: full,
        autopath_volumes_per_second: autopath,
        gain: autopath / full.max(1e-12),
    })
}

/// Means over the volumes: speed-ups, chain overhead, latency saving per FLOP saving, policy share.
fn summarize(volumes: &[VolumeBench]) -> BenchSummary {
    let nv = volumes.len() as f64;
    let mean = |f: &dyn Fn(&VolumeBench) -> f64| volumes.iter().map(f).sum::<f64>() / nv;
    let flop_fraction = mean(&|v| v.flop_fraction);
    let latency_fraction = mean(&|v| v.autopath_network.median / v.full_network.median);
    BenchSummary {
        speedup: mean(&|v| v.full_graph.median / v.autopath.median),
        speedup_network: mean(&|v| v.full_network.median / v.autopath_network.median),
        speedup_e2e: mean(&|v| v.full_e2e.median / v.autopath_e2e.median),
        chain_overhead: mean(&|v| v.chain_all.median / v.full_graph.median),
        flop_fraction,
        saving_ratio: (flop_fraction < 1.0).then(|| (1.0 - latency_fraction) / (1.0 - flop_fraction)),
        policy_share: mean(&|v| v.policy.median / v.full_graph.median),
        max_spread: volumes
            .iter()
            .flat_map(|v| [&v.full_graph, &v.chain_all, &v.autopath, &v.policy].map(Timing::spread))
            .fold(0.0, f64::max),
        peak_rss_mb: peak_rss_mb(),
        host_share: mean(&|v| v.host_share),
        path_graph_gain: mean(&|v| v.autopath_chain_network.median / v.autopath_network.median),
    }
}

/// The markdown table of a report.
pub fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let e = &r.environment;
    let short: String = e.bundle_sha256.chars().take(12).collect();
    let _ = writeln!(
        s,
        "CPU {} ({} cores), EP {:?}{}, ONNX Runtime {}, bundle {short}…, tile {:?} × batch {}, median of {} runs after {} warm-up\n",
        e.cpu,
        e.cores,
        e.ep,
        if e.cuda_math.is_empty() { String::new() } else { format!(" ({})", e.cuda_math) },
        e.onnx_runtime,
        e.tile,
        e.tile_batch,
        e.repeats,
        e.warmup
    );
    let _ = writeln!(s, "| volume | tiles | path | FLOPs | (a) full.onnx ms | (b) chain all ms | (c) AutoPath ms | network (a) ms | network (c) ms | policy ms | e2e full ms | e2e AutoPath ms |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for v in &r.volumes {
        let name = Path::new(&v.input).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ms = |t: &Timing| format!("{:.1}", 1e3 * t.median);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.1} % | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.tiles,
            v.keep,
            100.0 * v.flop_fraction,
            ms(&v.full_graph),
            ms(&v.chain_all),
            ms(&v.autopath),
            ms(&v.full_network),
            ms(&v.autopath_network),
            ms(&v.policy),
            ms(&v.full_e2e),
            ms(&v.autopath_e2e)
        );
    }
    let m = &r.summary;
    let _ = writeln!(
        s,
        "\nSpeed-up of AutoPath over full.onnx: {:.3}× network calls, {:.3}× sliding window, {:.3}× end to end. Chain overhead (b)/(a): {:.3}. FLOP fraction {:.1} %; network-time saving / FLOP saving: {}. Policy: {:.1} % of (a). Largest spread (p90 − min)/median: {:.1} %. Peak RSS {:.0} MB.",
        m.speedup_network,
        m.speedup,
        m.speedup_e2e,
        m.chain_overhead,
        100.0 * m.flop_fraction,
        m.saving_ratio.map_or("n/a (every block kept)".into(), |r| format!("{r:.2}")),
        100.0 * m.policy_share,
        100.0 * m.max_spread,
        m.peak_rss_mb
    );
    let f = &r.folder;
    let _ = writeln!(
        s,
        "\nAutoPath's path through the chain of block graphs / through the graph it runs: {:.3}. Host work (read, stitch, write) / network time, AutoPath end to end: {:.1} %. Folder of {} volumes, {} in flight (best of {}): full.onnx {:.2} volumes/s, AutoPath {:.2} volumes/s ({:.3}×).",
        m.path_graph_gain,
        100.0 * m.host_share,
        f.volumes,
        f.prefetch,
        f.runs,
        f.full_volumes_per_second,
        f.autopath_volumes_per_second,
        f.gain
    );
    s
}

/// Writes a report into `out`: `bench.json`, `bench.md` and the latency-against-FLOPs figure.
pub fn write(out: &Path, report: &BenchReport) -> Result<()> {
    use crate::study::figures::{line_chart, Series};
    use plotters::style::RGBColor;
    crate::study::train::checkpoint::write_json(&out.join("bench.json"), report)?;
    crate::atomic::write_bytes_atomically(&out.join("bench.md"), markdown(report).as_bytes())?;
    let pts: Vec<(f64, f64)> =
        report.volumes.iter().map(|v| (v.flop_fraction, v.autopath.median / v.full_graph.median)).collect();
    let chain: Vec<(f64, f64)> =
        report.volumes.iter().map(|v| (1.0, v.chain_all.median / v.full_graph.median)).collect();
    line_chart(
        out,
        "latency_vs_flops",
        "Network latency relative to full.onnx vs FLOP fraction",
        "FLOP fraction of the path",
        "latency / full.onnx latency",
        &[
            Series {
                label: "AutoPath (per volume)".into(),
                points: pts,
                color: RGBColor(214, 39, 40),
                band: None,
                markers_only: true,
            },
            Series {
                label: "chain, all blocks kept".into(),
                points: chain,
                color: RGBColor(31, 119, 180),
                band: None,
                markers_only: true,
            },
            Series {
                label: "full.onnx (a)".into(),
                points: vec![(0.5, 1.0), (1.0, 1.0)],
                color: RGBColor(120, 120, 120),
                band: None,
                markers_only: false,
            },
            Series {
                label: "latency = FLOPs".into(),
                points: vec![(0.5, 0.5), (1.0, 1.0)],
                color: RGBColor(44, 160, 44),
                band: None,
                markers_only: false,
            },
        ],
        (0.4, 1.2),
    )?;
    Ok(())
}

/// Image files to benchmark: a dataset folder's images, other folders' NIfTI files, or files; at most
/// `limit`.
pub fn inputs(data: &[PathBuf], limit: Option<usize>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in data {
        if d.is_dir() {
            match crate::study::dataset::Dataset::open(d, None) {
                Ok(ds) => out.extend(ds.cases.into_iter().map(|c| c.image)),
                Err(_) => out.extend(crate::input::source::find(d)?.sources.into_iter().filter_map(|s| match s {
                    crate::input::source::Source::Nifti(p) => Some(p),
                    crate::input::source::Source::Dicom(_) => None,
                })),
            }
        } else {
            out.push(d.clone());
        }
    }
    if let Some(l) = limit {
        out.truncate(l);
    }
    Ok(out)
}
