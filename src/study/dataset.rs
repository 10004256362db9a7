//! Dataset folders (LiTS, Medical Segmentation Decathlon, nnU-Net raw) and train/test splits.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A folder layout of image/label pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `volume-K.nii[.gz]` + `segmentation-K.nii[.gz]` in one folder (labels 0/1/2).
    Lits,
    /// Decathlon Task03_Liver: `imagesTr/liver_K.nii.gz` + `labelsTr/liver_K.nii.gz`.
    Msd,
    /// nnU-Net raw: `imagesTr/CASE_0000.nii.gz` + `labelsTr/CASE.nii.gz`.
    Nnunet,
}

/// One image with its label (if the dataset has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// Case id as the layout names it (`"28"` for LiTS `volume-28`, `"liver_3"`, nnU-Net's CASE).
    pub id: String,
    /// The image file.
    pub image: PathBuf,
    /// The label file, if the dataset has one for this case.
    pub label: Option<PathBuf>,
}

/// The cases found under a root folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder given.
    pub root: PathBuf,
    /// The layout found (or asked for).
    pub layout: Layout,
    /// All cases, in natural order of their ids.
    pub cases: Vec<Case>,
}

/// How cases divide into training and test sets.
#[derive(Debug, Clone, PartialEq)]
pub enum Split {
    /// This fraction of cases (at least one, at most all but one) goes to test, shuffled by `seed`.
    Ratio {
        /// Fraction of cases held out for test.
        test: f64,
        /// Shuffle seed.
        seed: u64,
    },
    /// Test case ids listed in a file, one per line (`#` comments allowed).
    List(PathBuf),
    /// The paper's split: LiTS cases 28–47 (the 3DIRCADb subset) are the test set.
    Ircadb,
}

impl std::str::FromStr for Split {
    type Err = Error;

    /// `3dircadb`, a ratio like `0.25` (seed 0; use [`Split::with_seed`]), or a path to a list file.
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("3dircadb") {
            return Ok(Split::Ircadb);
        }
        if let Ok(test) = s.parse::<f64>() {
            if !(test > 0.0 && test < 1.0) {
                return Err(Error::invalid("split", format!("test ratio {s} must be in (0, 1)")));
            }
            return Ok(Split::Ratio { test, seed: 0 });
        }
        Ok(Split::List(PathBuf::from(s)))
    }
}

impl Split {
    /// Sets the shuffle seed of a ratio split.
    pub fn with_seed(self, seed: u64) -> Self {
        match self {
            Split::Ratio { test, .. } => Split::Ratio { test, seed },
            other => other,
        }
    }
}

fn strip_nii(name: &str) -> Option<&str> {
    name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii"))
}

fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_file() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if !name.starts_with('.') {
                    out.push((name.to_string(), path.clone()));
                }
            }
        }
    }
    Ok(out)
}

/// Finds `stem.nii.gz` or `stem.nii` in `files`.
fn find(files: &[(String, PathBuf)], stem: &str) -> Option<PathBuf> {
    files.iter().find(|(n, _)| strip_nii(n) == Some(stem)).map(|(_, p)| p.clone())
}

/// Orders ids numerically where they end in a number (`liver_2` before `liver_10`), else by text.
fn natural_key(id: &str) -> (String, u64, String) {
    let digits: String =
        id.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
    let prefix = &id[..id.len() - digits.len()];
    (prefix.to_string(), digits.parse().unwrap_or(u64::MAX), id.to_string())
}

impl Dataset {
    /// Opens a dataset folder, detecting its layout unless `layout` is given.
    pub fn open(root: &Path, layout: Option<Layout>) -> Result<Dataset> {
        if !root.is_dir() {
            return Err(Error::Dataset { root: root.into(), reason: "is not a directory".into() });
        }
        let detected = match layout {
            Some(l) => l,
            None => Self::detect(root)?,
        };
        let cases = match detected {
            Layout::Lits => Self::lits(root)?,
            Layout::Msd | Layout::Nnunet => Self::images_labels(root, detected)?,
        };
        if cases.is_empty() {
            let expected = match detected {
                Layout::Lits => "volume-K.nii[.gz] with segmentation-K.nii[.gz]",
                Layout::Msd => "imagesTr/liver_K.nii.gz with labelsTr/liver_K.nii.gz",
                Layout::Nnunet => "imagesTr/CASE_0000.nii.gz with labelsTr/CASE.nii.gz",
            };
            return Err(Error::Dataset {
                root: root.into(),
                reason: format!("no cases found for the {detected:?} layout (expected {expected})"),
            });
        }
        Ok(Dataset { root: root.into(), layout: detected, cases })
    }

    fn detect(root: &Path) -> Result<Layout> {
        let images = root.join("imagesTr");
        if images.is_dir() {
            let files = list_files(&images)?;
            let nnunet = files.iter().any(|(n, _)| strip_nii(n).is_some_and(|s| s.len() > 5 && s.ends_with("_0000")));
            return Ok(if nnunet { Layout::Nnunet } else { Layout::Msd });
        }
        let files = list_files(root)?;
        if files.iter().any(|(n, _)| n.starts_with("volume-") && strip_nii(n).is_some()) {
            return Ok(Layout::Lits);
        }
        Err(Error::Dataset {
            root: root.into(),
            reason: "layout not recognised: expected LiTS files (volume-K.nii[.gz] + segmentation-K.nii[.gz]) or an imagesTr/ + labelsTr/ folder (Decathlon or nnU-Net raw)".into(),
        })
    }

    fn lits(root: &Path) -> Result<Vec<Case>> {
        let files = list_files(root)?;
        let mut cases: Vec<Case> = files
            .iter()
            .filter_map(|(n, p)| {
                let id = strip_nii(n)?.strip_prefix("volume-")?;
                Some(Case { id: id.to_string(), image: p.clone(), label: find(&files, &format!("segmentation-{id}")) })
            })
            .collect();
        cases.sort_by_key(|c| natural_key(&c.id));
        Ok(cases)
    }

    fn images_labels(root: &Path, layout: Layout) -> Result<Vec<Case>> {
        let images = list_files(&root.join("imagesTr"))?;
        let labels_dir = root.join("labelsTr");
        let labels = if labels_dir.is_dir() { list_files(&labels_dir)? } else { Vec::new() };
        let mut cases: Vec<Case> = images
            .iter()
            .filter_map(|(n, p)| {
                let stem = strip_nii(n)?;
                let id = match layout {
                    // Multi-modal nnU-Net cases have _0001…; the CT channel is _0000.
                    Layout::Nnunet => stem.strip_suffix("_0000")?,
                    _ => stem,
                };
                Some(Case { id: id.to_string(), image: p.clone(), label: find(&labels, id) })
            })
            .collect();
        cases.sort_by_key(|c| natural_key(&c.id));
        Ok(cases)
    }

    /// Cases that have a label (training and evaluation need one).
    pub fn labelled(&self) -> Vec<Case> {
        self.cases.iter().filter(|c| c.label.is_some()).cloned().collect()
    }

    /// Divides the labelled cases into `(train, test)`.
    pub fn split(&self, split: &Split) -> Result<(Vec<Case>, Vec<Case>)> {
        let cases = self.labelled();
        let fail = |reason: String| Err(Error::Dataset { root: self.root.clone(), reason });
        if cases.len() < 2 {
            return fail(format!("{} labelled case(s); a split needs at least 2", cases.len()));
        }
        let is_test: Box<dyn Fn(&Case) -> bool> = match split {
            Split::Ratio { test, seed } => {
                let n_test = ((cases.len() as f64 * test).round() as usize).clamp(1, cases.len() - 1);
                let mut order: Vec<usize> = (0..cases.len()).collect();
                order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(*seed));
                let chosen: Vec<String> = order[..n_test].iter().map(|&i| cases[i].id.clone()).collect();
                Box::new(move |c| chosen.contains(&c.id))
            }
            Split::List(file) => {
                let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
                let ids: Vec<String> = text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                let unknown: Vec<&String> = ids.iter().filter(|id| !cases.iter().any(|c| &c.id == *id)).collect();
                if !unknown.is_empty() {
                    return fail(format!(
                        "split file {} names case(s) not in the dataset: {unknown:?}",
                        file.display()
                    ));
                }
                Box::new(move |c| ids.contains(&c.id))
            }
            Split::Ircadb => {
                if self.layout != Layout::Lits {
                    return fail(format!("the 3dircadb split needs the LiTS layout, found {:?}", self.layout));
                }
                Box::new(|c| c.id.parse::<u32>().is_ok_and(|k| (28..=47).contains(&k)))
            }
        };
        let (test, train): (Vec<Case>, Vec<Case>) = cases.into_iter().partition(|c| is_test(c));
        if test.is_empty() || train.is_empty() {
            return fail(format!(
                "split {split:?} leaves {} training and {} test cases; both need at least one",
                train.len(),
                test.len()
            ));
        }
        Ok((train, test))
    }
}

/// What a data set says about itself in its `dataset.json` (Medical Segmentation Decathlon or nnU-Net
/// v2): label names by value, and the image modality.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Description {
    /// Label names, index = label value (`background` first).
    pub labels: Vec<String>,
    /// Modality of the (first) image channel, e.g. `CT` or `MRI`.
    pub modality: Option<String>,
}

impl Description {
    /// Reads `root/dataset.json`; None when there is none. MSD writes `"labels": {"0": "background", …}`
    /// and `"modality": {"0": "CT"}`; nnU-Net v2 writes `"labels": {"background": 0, …}` and
    /// `"channel_names": {"0": "CT"}`.
    pub fn read(root: &Path) -> Result<Option<Description>> {
        let path = root.join("dataset.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), source: e })?;
        let bad = |why: String| Error::Dataset { root: root.into(), reason: format!("dataset.json: {why}") };
        let mut by_value: Vec<(u64, String)> = Vec::new();
        for (k, v) in json.get("labels").and_then(|l| l.as_object()).into_iter().flatten() {
            let (value, name) = match (k.parse::<u64>(), v) {
                (Ok(value), serde_json::Value::String(name)) => (value, name.clone()),
                (Err(_), serde_json::Value::Number(n)) => {
                    (n.as_u64().ok_or_else(|| bad(format!("label {k:?} = {n}")))?, k.clone())
                }
                _ => return Err(bad(format!("label {k:?}: {v} is neither a name by value nor a value by name"))),
            };
            by_value.push((value, name));
        }
        by_value.sort();
        if by_value.iter().enumerate().any(|(i, (v, _))| *v != i as u64) {
            let values: Vec<u64> = by_value.iter().map(|(v, _)| *v).collect();
            return Err(bad(format!("label values {values:?} are not 0, 1, 2, …")));
        }
        let channel = |key: &str| json.get(key).and_then(|m| m.get("0")).and_then(|v| v.as_str()).map(str::to_string);
        Ok(Some(Description {
            labels: by_value.into_iter().map(|(_, n)| n).collect(),
            modality: channel("modality").or_else(|| channel("channel_names")),
        }))
    }
}

/// The median voxel spacing `[D, H, W]` mm of `cases`' images, axis by axis (nnU-Net's target spacing),
/// from their headers alone.
pub fn median_spacing(cases: &[Case]) -> Result<[f64; 3]> {
    let opts = crate::input::volume::ReadOptions::default();
    let mut axes: [Vec<f64>; 3] = Default::default();
    for c in cases {
        let g = crate::input::volume::read_geometry(&c.image, &opts)?;
        for (a, s) in g.spacing_dhw().into_iter().enumerate() {
            axes[a].push(s);
        }
    }
    if cases.is_empty() {
        return Err(Error::invalid("--spacing median", "no training volumes"));
    }
    Ok(axes.map(|mut v| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }))
}

impl Description {
    /// The network's output label names from the data set's: with merged labels (one foreground) the
    /// foreground names joined by `+`; with kept labels, one name per class.
    pub fn output_labels(&self, merged: bool, classes: usize) -> Result<Vec<String>> {
        let n = &self.labels;
        if n.len() < 2 {
            return Err(Error::invalid("label names", format!("{n:?}: need background and at least one label")));
        }
        if merged {
            return Ok(vec![n[0].clone(), n[1..].join("+")]);
        }
        if n.len() != classes {
            return Err(Error::invalid(
                "label names",
                format!("{} names ({}) for a network of {classes} classes", n.len(), n.join(", ")),
            ));
        }
        Ok(n.clone())
    }
}

/// `train --spacing`: the voxel spacing the network sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpacingChoice {
    /// The training volumes' median spacing, axis by axis (nnU-Net's choice).
    Median,
    /// This spacing `[D, H, W]` mm.
    Fixed([f64; 3]),
    /// Every volume at its own voxel grid, unresampled.
    Native,
}

impl std::str::FromStr for SpacingChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "median" => return Ok(SpacingChoice::Median),
            "none" => return Ok(SpacingChoice::Native),
            _ => {}
        }
        let v: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| format!("{s:?}: expected median, none or D,H,W in mm (e.g. 2.5,0.8,0.8)"))?;
        match v.as_slice() {
            [d, h, w] if v.iter().all(|x| x.is_finite() && *x > 0.0) => Ok(SpacingChoice::Fixed([*d, *h, *w])),
            _ => Err(format!("{s:?}: expected three positive spacings D,H,W in mm")),
        }
    }
}

impl SpacingChoice {
    /// The target spacing for training on `cases` (None: unresampled).
    pub fn target(self, cases: &[Case]) -> Result<Option<[f64; 3]>> {
        match self {
            SpacingChoice::Median => median_spacing(cases).map(Some),
            SpacingChoice::Fixed(s) => Ok(Some(s)),
            SpacingChoice::Native => Ok(None),
        }
    }
}
