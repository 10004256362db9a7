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
