//! Many volumes, one process: input listing, deterministic sharding across machines, skipping
//! finished outputs, and per-file failure that does not stop the batch.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::input::source::{find, is_nifti, OutputType, Source};

/// `I/N`: this process takes the I-th (0-based) of N interleaved slices of the sorted input list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Index, 0 ≤ index < count.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4"))?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| format!("{i:?} is not a number"))?,
            n.trim().parse().map_err(|_| format!("{n:?} is not a number"))?,
        );
        if count == 0 || index >= count {
            return Err(format!("{s:?}: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

/// The volumes to segment and where each result goes, and the files skipped on the way.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// `(source, output)`, in input order.
    pub pairs: Vec<(Source, PathBuf)>,
    /// Files in the input that are not volumes (a structured report, a text file), and why.
    pub notes: Vec<String>,
}

/// `(input, output)` pairs: one volume maps to a file (or into a folder), several to a folder of
/// outputs named after their inputs (a NIfTI file's name; a DICOM series' name with the extension of
/// `kind`). Sorted by input, then sharded. A DICOM SEG needs a DICOM source.
pub fn plan(input: &Path, output: &Path, shard: Option<Shard>, kind: OutputType) -> Result<Plan> {
    let found = find(input)?;
    if kind == OutputType::DicomSeg {
        if let Some(Source::Nifti(p)) = found.sources.iter().find(|s| matches!(s, Source::Nifti(_))) {
            return Err(Error::invalid(
                "--output-type",
                format!("dicom-seg references the source images, and {} is NIfTI; use nifti", p.display()),
            ));
        }
    }
    let single = found.sources.len() == 1 && !(input.is_dir() && matches!(found.sources[0], Source::Nifti(_)));
    // An existing folder, or a name ending in a separator, takes the input's name.
    let into_folder = output.is_dir() || output.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR);
    let mut pairs: Vec<(Source, PathBuf)> = if single && !into_folder {
        found.sources.into_iter().map(|s| (s, output.to_path_buf())).collect()
    } else {
        if !single && !into_folder && (is_nifti(output) || OutputType::of(output) == OutputType::DicomSeg) {
            return Err(Error::invalid(
                "-o",
                format!(
                    "{} holds {} volumes; give a folder, not {}",
                    input.display(),
                    found.sources.len(),
                    output.display()
                ),
            ));
        }
        check_folder("-o", output)?;
        found.sources.into_iter().map(|s| (output.join(s.output_name(kind)), s)).map(|(o, s)| (s, o)).collect()
    };
    if let Some(s) = shard {
        pairs = pairs.into_iter().enumerate().filter(|(i, _)| i % s.count == s.index).map(|(_, p)| p).collect();
    }
    Ok(Plan { pairs, notes: found.notes })
}

/// The checks an output path passes before any volume is computed: not the input itself, not a folder, and a parent folder that exists (created if missing) and takes
/// files. `what` names the option in the message.
pub fn check_output(what: &'static str, input: Option<&Path>, output: &Path) -> Result<()> {
    if output.is_dir() {
        return Err(Error::invalid(what, format!("{} is a folder; give a file name", output.display())));
    }
    if let (Some(i), Ok(o)) = (input.and_then(|i| i.canonicalize().ok()), output.canonicalize()) {
        if i == o {
            return Err(Error::invalid(what, format!("{} is the input itself", output.display())));
        }
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    check_folder(what, parent).map_err(|e| match e {
        Error::InvalidArgument { what, reason } => {
            Error::InvalidArgument { what, reason: format!("{}: {reason}", output.display()) }
        }
        other => other,
    })
}

/// A folder that exists (created if missing) and takes new files: probed by creating and removing a
/// hidden file, which also catches read-only mounts and quotas that permission bits do not show.
pub fn check_folder(what: &'static str, dir: &Path) -> Result<()> {
    if let Some(file) = dir.ancestors().find(|a| a.is_file()) {
        return Err(Error::invalid(what, format!("cannot create {}: {} is a file", dir.display(), file.display())));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::invalid(what, format!("cannot create the folder {}: {e}", dir.display())))?;
    let probe = dir.join(format!(".autopath-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::invalid(what, format!("{} is not writable: {e}", dir.display()))),
    }
}

/// [`check_output`] for every pair of a plan (each output folder probed once), and a refusal of
/// output names that are not of `kind`.
pub fn check_outputs(pairs: &[(Source, PathBuf)], kind: OutputType) -> Result<()> {
    let mut probed = std::collections::HashSet::new();
    for (input, output) in pairs {
        if !kind.accepts(output) {
            return Err(Error::invalid("-o", format!("{}: expected {}", output.display(), kind.names())));
        }
        let parent = output.parent().map(Path::to_path_buf).unwrap_or_default();
        if probed.insert(parent) {
            check_output("-o", Some(input.path()), output)?;
        } else if output.is_dir() {
            return Err(Error::invalid("-o", format!("{} is a folder; give a file name", output.display())));
        }
    }
    Ok(())
}

/// Volumes in flight by default: as many as half the available memory holds by the largest of the
/// first inputs' headers (raw and normalised image, blended sum and weight per class, labels), at
/// least 1 and at most 3 (one reading, one in the network, one writing) where the network runs on the
/// CPU's cores. With the network on a GPU, at most half the cores, from 3 to 8: each volume's host
/// work (read, blend, write) runs on one thread, and on an H200 machine it took about three times the
/// network's time per volume (docs/gpu.md), so three volumes in flight could not keep the GPU busy.
pub fn default_prefetch(
    pairs: &[(Source, PathBuf)],
    read: &crate::input::volume::ReadOptions,
    classes: usize,
    network_on_gpu: bool,
) -> usize {
    let voxels = pairs.iter().take(16).filter_map(|(i, _)| i.voxels(read)).max().unwrap_or(0);
    let per_volume = voxels as f64 * (4.0 * (3 + classes) as f64 + 2.0);
    let available = available_memory_bytes().unwrap_or(4.0 * (1u64 << 30) as f64);
    if per_volume <= 0.0 {
        return 2;
    }
    let most = match network_on_gpu {
        true => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).clamp(3, 8),
        false => 3,
    };
    ((available / 2.0 / per_volume).floor() as usize).clamp(1, most)
}

/// `MemAvailable` of `/proc/meminfo` in bytes (Linux), None elsewhere.
fn available_memory_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// How a batch runs: skip finished outputs, and how many volumes are in flight.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Skip inputs whose output exists (a re-submitted array job picks up where it stopped).
    pub skip_existing: bool,
    /// Volumes in flight at once (at least 1; 1 is a sequential run): while one is in the network,
    /// the next is read and preprocessed and the previous one blended and written.
    pub prefetch: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { skip_existing: false, prefetch: 1 }
    }
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BatchSummary {
    /// Inputs planned.
    pub volumes: usize,
    /// Written.
    pub segmented: usize,
    /// Refused or failed, each reported with its reason.
    pub failed: usize,
    /// Skipped because their output existed.
    pub skipped: usize,
    /// Sum of the segmented volumes' own wall times.
    pub seconds: f64,
    /// Wall time of the whole batch.
    pub wall_seconds: f64,
    /// Volumes in flight on average: `seconds` over `wall_seconds` (1 for a sequential run).
    pub mean_in_flight: f64,
    /// Volumes in flight at most.
    pub prefetch: usize,
}

/// One volume's fate, for progress display; events come in input order.
pub enum Event<'a> {
    /// Written, with its report and its wall seconds.
    Done(&'a super::VolumeReport, f64),
    /// Failed, with the reason (the batch goes on).
    Failed(&'a str, &'a Error),
    /// Skipped: its output exists.
    Skipped(&'a str),
}

enum Outcome {
    Done(Box<super::VolumeReport>, f64),
    Failed(Error),
    Skipped,
}

/// Segments every pair, `opts.prefetch` volumes at a time (each on a thread of its own, the tiles in
/// the predictor's network threads, oldest volume first). A failure is reported (to `report` as a
/// JSON line with the input and the error, and to `on`) and the batch goes on; `report` gets one line
/// per volume, in input order, and a summary line. Outputs are the same bytes whatever the prefetch.
pub fn run_batch(
    predictor: &super::Predictor,
    pairs: &[(Source, PathBuf)],
    choice: &super::PathChoice,
    opts: BatchOptions,
    mut report: Option<&mut dyn std::io::Write>,
    on: &mut dyn FnMut(Event),
) -> Result<BatchSummary> {
    let k = opts.prefetch.max(1).min(pairs.len().max(1));
    let mut s = BatchSummary { volumes: pairs.len(), prefetch: k, ..Default::default() };
    let start = std::time::Instant::now();
    let rss_at_start = super::predict::resident_mb();
    let next = std::sync::Mutex::new(0usize);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Outcome)>();
    let emitted = std::thread::scope(|scope| {
        for _ in 0..k {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || {
                while let Some((i, stream)) = take_next(next, stop, pairs.len(), predictor) {
                    let (inp, out) = &pairs[i];
                    let outcome = if opts.skip_existing && out.exists() {
                        Outcome::Skipped
                    } else {
                        let t = std::time::Instant::now();
                        match predictor.segment_file_on(stream, inp, out, choice) {
                            Ok(r) => Outcome::Done(Box::new(r), t.elapsed().as_secs_f64()),
                            Err(e) => Outcome::Failed(e),
                        }
                    };
                    if tx.send((i, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting = std::collections::BTreeMap::new();
        let mut due = 0;
        for (i, outcome) in rx {
            waiting.insert(i, outcome);
            while let Some(outcome) = waiting.remove(&due) {
                if let Err(e) = emit(&mut s, &pairs[due].0.describe(), outcome, &mut report, on) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
                due += 1;
            }
        }
        Ok(())
    });
    emitted?;
    s.wall_seconds = start.elapsed().as_secs_f64();
    s.mean_in_flight = if s.wall_seconds > 0.0 { s.seconds / s.wall_seconds } else { 0.0 };
    let summary = serde_json::json!({"summary": {"volumes": s.volumes, "segmented": s.segmented, "failed": s.failed,
        "skipped": s.skipped, "seconds": s.seconds, "wall_seconds": s.wall_seconds,
        "volumes_per_second": s.segmented as f64 / s.wall_seconds.max(1e-9), "mean_in_flight": s.mean_in_flight,
        "prefetch": s.prefetch, "rss_at_start_mb": rss_at_start, "peak_rss_mb": super::predict::peak_rss_mb()}});
    report_line(&mut report, summary.to_string())?;
    Ok(s)
}

/// The next input's index with a stream opened for it, in input order (so earlier volumes' tiles
/// run first); None when the plan is done or the batch stopped.
fn take_next<'p>(
    next: &std::sync::Mutex<usize>,
    stop: &std::sync::atomic::AtomicBool,
    len: usize,
    predictor: &'p super::Predictor,
) -> Option<(usize, super::network::Stream<'p>)> {
    let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
    if *n >= len || stop.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    *n += 1;
    Some((*n - 1, predictor.stream()))
}

fn report_line(report: &mut Option<&mut dyn std::io::Write>, line: String) -> Result<()> {
    if let Some(f) = report.as_mut() {
        writeln!(f, "{line}").map_err(|e| Error::io("--report", e))?;
    }
    Ok(())
}

/// Counts one volume's outcome and reports it.
fn emit(
    s: &mut BatchSummary,
    input: &str,
    outcome: Outcome,
    report: &mut Option<&mut dyn std::io::Write>,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    match outcome {
        Outcome::Done(r, seconds) => {
            s.segmented += 1;
            s.seconds += seconds;
            report_line(report, serde_json::to_string(&r).map_err(|e| Error::invalid("report", e.to_string()))?)?;
            on(Event::Done(&r, seconds));
        }
        Outcome::Failed(e) => {
            s.failed += 1;
            let failure = serde_json::json!({"input": input, "error": e.to_string()});
            report_line(report, failure.to_string())?;
            on(Event::Failed(input, &e));
        }
        Outcome::Skipped => {
            s.skipped += 1;
            on(Event::Skipped(input));
        }
    }
    Ok(())
}
