//! Many volumes, one process: input listing, deterministic sharding across machines, skipping
//! finished outputs, and per-file failure that does not stop the batch.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

fn is_nifti(p: &Path) -> bool {
    let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    (n.ends_with(".nii") || n.ends_with(".nii.gz")) && !n.starts_with('.')
}

/// `(input, output)` pairs: a file maps to a file (or into a folder), a folder to a folder of
/// outputs with the same names. Sorted by input path, then sharded.
pub fn plan(input: &Path, output: &Path, shard: Option<Shard>) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut pairs = if input.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|e| Error::io(input, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_nifti(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::invalid("-i", format!("{} holds no .nii or .nii.gz files", input.display())));
        }
        files
            .into_iter()
            .map(|f| (output.join(f.file_name().unwrap_or_default()), f))
            .map(|(o, i)| (i, o))
            .collect::<Vec<_>>()
    } else if input.is_file() {
        let out =
            if output.is_dir() { output.join(input.file_name().unwrap_or_default()) } else { output.to_path_buf() };
        vec![(input.to_path_buf(), out)]
    } else {
        return Err(Error::invalid("-i", format!("{} does not exist", input.display())));
    };
    if let Some(s) = shard {
        pairs = pairs.into_iter().enumerate().filter(|(i, _)| i % s.count == s.index).map(|(_, p)| p).collect();
    }
    Ok(pairs)
}

/// How a batch runs: skip finished outputs, and where its per-volume report lines go.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOptions {
    /// Skip inputs whose output exists (a re-submitted array job picks up where it stopped).
    pub skip_existing: bool,
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
    /// Seconds spent on the segmented ones.
    pub seconds: f64,
}

/// One volume's fate, for progress display.
pub enum Event<'a> {
    /// About to segment (or skip) this input.
    Start(&'a Path),
    /// Written, with its report and seconds.
    Done(&'a super::VolumeReport, f64),
    /// Failed, with the reason (the batch goes on).
    Failed(&'a Path, &'a Error),
    /// Skipped: its output exists.
    Skipped(&'a Path),
}

/// Segments every pair in order. A failure is reported (to `report` as a JSON line with the input and
/// the error, and to `on`) and the batch goes on; `report` gets one line per volume and a summary line.
pub fn run_batch(
    predictor: &mut super::Predictor,
    pairs: &[(PathBuf, PathBuf)],
    choice: &super::PathChoice,
    opts: BatchOptions,
    mut report: Option<&mut dyn std::io::Write>,
    on: &mut dyn FnMut(Event),
) -> Result<BatchSummary> {
    let mut s = BatchSummary { volumes: pairs.len(), ..Default::default() };
    let line = |report: &mut Option<&mut dyn std::io::Write>, v: String| -> Result<()> {
        if let Some(f) = report.as_mut() {
            writeln!(f, "{v}").map_err(|e| Error::io("--report", e))?;
        }
        Ok(())
    };
    for (inp, out) in pairs {
        on(Event::Start(inp));
        if opts.skip_existing && out.exists() {
            s.skipped += 1;
            on(Event::Skipped(inp));
            continue;
        }
        let t = std::time::Instant::now();
        match predictor.segment_file(inp, out, choice) {
            Ok(r) => {
                s.segmented += 1;
                let seconds = t.elapsed().as_secs_f64();
                s.seconds += seconds;
                line(&mut report, serde_json::to_string(&r).map_err(|e| Error::invalid("report", e.to_string()))?)?;
                on(Event::Done(&r, seconds));
            }
            Err(e) => {
                s.failed += 1;
                let failure = serde_json::json!({"input": inp.display().to_string(), "error": e.to_string()});
                line(&mut report, failure.to_string())?;
                on(Event::Failed(inp, &e));
            }
        }
    }
    let summary = serde_json::json!({"summary": {"volumes": s.volumes, "segmented": s.segmented, "failed": s.failed,
        "skipped": s.skipped, "seconds": s.seconds, "peak_rss_mb": super::predict::peak_rss_mb()}});
    line(&mut report, summary.to_string())?;
    Ok(s)
}
