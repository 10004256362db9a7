//! Synthetic phantoms, so that every stage can be trained, tested and demonstrated without downloading
//! patient data: abdominal CT with liver labels (the demo's family), and T1-like MR heads with a brain
//! label ([`head`]), a second family with other intensities, shape and spacing that the defaults are
//! never tuned on.
//!
//! Anatomy is defined in normalised coordinates (x, y, z ∈ [-1, 1] across the field of view) and
//! rendered on a grid whose spacing varies per case, with the matching affine. Cases are spread over a
//! difficulty range (liver size, liver/tissue contrast, noise) so that some volumes are easy and some
//! hard: an image-specific policy has something to learn only if images differ.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::volume::{write_image_i16, write_labels, Geometry};

pub mod head;

/// Which kind of phantom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Abdominal CT in HU, liver (and lesion) labels.
    #[default]
    Ct,
    /// T1-like MR head in arbitrary units with a bias field, brain label (train with `--intensity zscore`).
    Mr,
}

/// Tissue intensities in HU (non-liver values from typical portal-venous abdominal CT).
#[allow(missing_docs)] // the names say what they are
pub mod hu {
    pub const AIR: f32 = -1000.0;
    pub const FAT: f32 = -100.0;
    pub const SOFT_TISSUE: f32 = 40.0;
    pub const SPLEEN: f32 = 45.0;
    pub const KIDNEY: f32 = 150.0;
    pub const BONE_CANCELLOUS: f32 = 400.0;
    pub const BONE_CORTICAL: f32 = 1000.0;
    /// Liver intensities span this range across cases (contrast variation).
    pub const LIVER_RANGE: (f32, f32) = (50.0, 70.0);
}

/// Label values, as in LiTS.
#[allow(missing_docs)]
pub mod label {
    pub const BACKGROUND: u8 = 0;
    pub const LIVER: u8 = 1;
    pub const LESION: u8 = 2;
}

/// What to synthesise.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Number of cases.
    pub cases: usize,
    /// Seed; the same seed gives the same files.
    pub seed: u64,
    /// Volume shape `[D, H, W]`.
    pub size: [usize; 3],
    /// Which phantoms.
    pub family: Family,
    /// The hardest case's difficulty: cases spread evenly over [0, this] (1: the full range).
    pub max_difficulty: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { cases: 24, seed: 0, size: [48, 128, 128], family: Family::Ct, max_difficulty: 1.0 }
    }
}

/// The parameters a phantom was drawn with, saved to `phantoms.json` beside the volumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[allow(missing_docs)] // fields are the drawn parameters, named as such
pub struct PhantomInfo {
    pub id: String,
    /// 0 = easiest, 1 = hardest.
    pub difficulty: f32,
    /// mm, NIfTI order (x, y, z).
    pub spacing: [f64; 3],
    pub liver_hu: f32,
    pub tissue_hu: f32,
    pub noise_sd: f32,
    /// Liver size relative to the easiest case.
    pub liver_scale: f32,
    pub lesions: usize,
    /// Fraction of voxels labelled liver or lesion.
    pub liver_fraction: f32,
}

/// An ellipsoid in normalised coordinates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ellipsoid {
    pub(crate) centre: [f32; 3],
    pub(crate) axes: [f32; 3],
}

impl Ellipsoid {
    /// < 1 inside, 1 on the surface.
    pub(crate) fn level(&self, p: [f32; 3]) -> f32 {
        (0..3).map(|a| ((p[a] - self.centre[a]) / self.axes[a]).powi(2)).sum()
    }
}

/// A smooth random displacement: a few low-frequency sinusoids per axis.
#[derive(Debug, Clone)]
pub(crate) struct Deformation {
    waves: Vec<([f32; 3], f32, usize, f32)>, // (frequency vector, phase, displaced axis, amplitude)
}

impl Deformation {
    pub(crate) fn random(rng: &mut ChaCha8Rng, amplitude: f32) -> Self {
        let waves = (0..6)
            .map(|i| {
                let freq = [rng.random_range(-3.0..3.0), rng.random_range(-3.0..3.0), rng.random_range(-2.0..2.0)];
                (freq, rng.random_range(0.0..std::f32::consts::TAU), i % 3, amplitude * rng.random_range(0.5..1.0))
            })
            .collect();
        Deformation { waves }
    }

    pub(crate) fn apply(&self, p: [f32; 3]) -> [f32; 3] {
        let mut q = p;
        for (f, phase, axis, amp) in &self.waves {
            q[*axis] += amp * (f[0] * p[0] + f[1] * p[1] + f[2] * p[2] + phase).sin();
        }
        q
    }
}

/// Everything needed to render one case.
struct Anatomy {
    liver_lobes: Vec<Ellipsoid>,
    liver_warp: Deformation,
    lesions: Vec<(Ellipsoid, f32)>,
    kidneys: [Ellipsoid; 2],
    spleen: Ellipsoid,
    body: [f32; 2],
    liver_hu: f32,
    tissue_hu: f32,
    texture: Deformation,
    noise_sd: f32,
}

pub(crate) fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

impl Anatomy {
    fn draw(rng: &mut ChaCha8Rng, difficulty: f32) -> (Anatomy, f32) {
        let d = difficulty;
        let scale = lerp(1.15, 0.85, d) * rng.random_range(0.95..1.05);
        let jitter = |rng: &mut ChaCha8Rng, s: f32| rng.random_range(-s..s);
        let liver_lobes = vec![
            // Right lobe (image left), the bulk of the liver.
            Ellipsoid {
                centre: [-0.36 + jitter(rng, 0.04), -0.1 + jitter(rng, 0.04), 0.05 + jitter(rng, 0.1)],
                axes: [0.42 * scale, 0.42 * scale, 0.75 * scale],
            },
            // Left lobe, reaching across the midline anteriorly.
            Ellipsoid {
                centre: [0.0 + jitter(rng, 0.05), -0.3 + jitter(rng, 0.03), 0.2 + jitter(rng, 0.1)],
                axes: [0.36 * scale, 0.18 * scale, 0.45 * scale],
            },
            // Caudate lobe.
            Ellipsoid { centre: [-0.15, 0.05, 0.15], axes: [0.14 * scale, 0.14 * scale, 0.3 * scale] },
        ];
        let liver_warp = Deformation::random(rng, 0.05);
        let tissue_hu = hu::SOFT_TISSUE + jitter(rng, 3.0);
        let liver_hu = (lerp(hu::LIVER_RANGE.1, hu::LIVER_RANGE.0, d) + jitter(rng, 2.0))
            .clamp(hu::LIVER_RANGE.0, hu::LIVER_RANGE.1);
        let n_lesions = rng.random_range(0..=3);
        let lesions = (0..n_lesions)
            .map(|_| {
                let lobe = liver_lobes[0];
                let centre = std::array::from_fn(|a| lobe.centre[a] + lobe.axes[a] * rng.random_range(-0.45..0.45));
                let r = rng.random_range(0.04..0.09) * scale;
                (Ellipsoid { centre, axes: [r, r, r * 1.2] }, liver_hu - rng.random_range(25.0..45.0))
            })
            .collect();
        let kidneys = [
            Ellipsoid { centre: [-0.38, 0.36, -0.15 + jitter(rng, 0.1)], axes: [0.1, 0.13, 0.4] },
            Ellipsoid { centre: [0.38, 0.36, -0.1 + jitter(rng, 0.1)], axes: [0.1, 0.13, 0.4] },
        ];
        let spleen = Ellipsoid { centre: [0.55, 0.12, 0.25 + jitter(rng, 0.1)], axes: [0.12, 0.2, 0.33] };
        let anatomy = Anatomy {
            liver_lobes,
            liver_warp,
            lesions,
            kidneys,
            spleen,
            body: [0.92 + jitter(rng, 0.03), 0.72 + jitter(rng, 0.03)],
            liver_hu,
            tissue_hu,
            texture: Deformation::random(rng, 1.0),
            noise_sd: lerp(5.0, 22.0, d) * rng.random_range(0.9..1.1),
        };
        (anatomy, scale)
    }

    /// HU and label at a normalised point, before noise.
    fn sample(&self, p: [f32; 3]) -> (f32, u8) {
        let [x, y, z] = p;
        let taper = 1.0 - 0.06 * z * z;
        let body = (x / (self.body[0] * taper)).powi(2) + (y / (self.body[1] * taper)).powi(2);
        if body > 1.0 {
            return (hu::AIR, label::BACKGROUND);
        }
        if body > 0.8 {
            return (hu::FAT, label::BACKGROUND);
        }
        // Vertebral body: cortical shell around cancellous bone.
        let spine = ((x / 0.11).powi(2) + ((y - 0.45) / 0.11).powi(2)).sqrt();
        if spine < 1.0 {
            let v = if spine > 0.8 { hu::BONE_CORTICAL } else { hu::BONE_CANCELLOUS };
            return (v, label::BACKGROUND);
        }
        if self.kidneys.iter().any(|k| k.level(p) < 1.0) {
            return (hu::KIDNEY, label::BACKGROUND);
        }
        if self.spleen.level(p) < 1.0 {
            return (hu::SPLEEN, label::BACKGROUND);
        }
        let q = self.liver_warp.apply(p);
        if self.liver_lobes.iter().any(|l| l.level(q) < 1.0) {
            for (lesion, v) in &self.lesions {
                if lesion.level(q) < 1.0 {
                    return (*v, label::LESION);
                }
            }
            return (self.liver_hu, label::LIVER);
        }
        // Retroperitoneal and mesenteric fat between organs, with soft-tissue texture elsewhere.
        let t = self.texture.apply([x * 2.0, y * 2.0, z]);
        let wobble = (t[0] - x * 2.0).sin() * (t[1] - y * 2.0).cos();
        if wobble > 0.75 {
            (hu::FAT, label::BACKGROUND)
        } else {
            (self.tissue_hu + 8.0 * wobble, label::BACKGROUND)
        }
    }
}

/// Difficulty of each case: evenly spread over [0, `max`], in an order shuffled by the seed so that any
/// split of case ids gets both easy and hard cases.
pub fn difficulties(cases: usize, seed: u64, max: f32) -> Vec<f32> {
    use rand::seq::SliceRandom;
    let mut d: Vec<f32> =
        (0..cases).map(|k| max * if cases > 1 { k as f32 / (cases - 1) as f32 } else { 0.5 }).collect();
    d.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_d1ff));
    d
}

pub(crate) fn case_rng(seed: u64, case: usize, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ case as u64);
    rng.set_stream(stream);
    rng
}

/// Renders a volume of `size` voxel by voxel from normalised coordinates: `voxel(p, n)` gives the
/// stored intensity and label at `p` with `n` a noise sample of standard deviation `noise_sd`. One
/// noise stream per slice, so the output is identical whatever the thread count.
pub(crate) fn render(
    size: [usize; 3],
    (seed, case): (u64, usize),
    noise_sd: f32,
    voxel: impl Fn([f32; 3], f32) -> (f32, u8) + Sync,
) -> (Array3<i16>, Array3<u8>) {
    let [d, h, w] = size;
    let mut image = Array3::<i16>::zeros(size);
    let mut labels = Array3::<u8>::zeros(size);
    let norm = |i: usize, n: usize| if n > 1 { 2.0 * i as f32 / (n - 1) as f32 - 1.0 } else { 0.0 };
    image.axis_iter_mut(Axis(0)).into_par_iter().zip(labels.axis_iter_mut(Axis(0))).enumerate().for_each(
        |(k, (mut img, mut lab))| {
            let mut noise_rng = case_rng(seed, case, 1 + k as u64);
            let noise = Normal::new(0.0f32, noise_sd).expect("positive noise sd");
            let z = norm(k, d);
            for j in 0..h {
                for i in 0..w {
                    let (v, l) = voxel([norm(i, w), norm(j, h), z], noise.sample(&mut noise_rng));
                    img[[j, i]] = v.round() as i16;
                    lab[[j, i]] = l;
                }
            }
        },
    );
    (image, labels)
}

/// A grid of `size` with in-plane and slice spacing, centred on the origin; `flip` mirrors i and j
/// (patient-style, LPS-like orientation).
pub(crate) fn centred_geometry(size: [usize; 3], inplane: f64, slice: f64, flip: bool) -> Geometry {
    let [d, h, w] = size.map(|v| v as f64);
    let s = if flip { -inplane } else { inplane };
    let affine = [
        [s, 0.0, 0.0, -s * (w - 1.0) / 2.0],
        [0.0, s, 0.0, -s * (h - 1.0) / 2.0],
        [0.0, 0.0, slice, -slice * (d - 1.0) / 2.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    Geometry::new(size, affine)
}

/// Renders one phantom: HU image, labels, geometry and the parameters drawn.
pub fn phantom(case: usize, difficulty: f32, cfg: &SynthConfig) -> (Array3<i16>, Array3<u8>, Geometry, PhantomInfo) {
    let mut rng = case_rng(cfg.seed, case, 0);
    let inplane: f64 = rng.random_range(0.6..0.9);
    let slice: f64 = rng.random_range(1.0..5.0);
    let (anatomy, scale) = Anatomy::draw(&mut rng, difficulty);
    let (image, labels) = render(cfg.size, (cfg.seed, case), anatomy.noise_sd, |p, n| {
        let (v, l) = anatomy.sample(p);
        let v = if v > hu::AIR { v + n } else { v + n * 0.2 };
        (v.round().clamp(-1024.0, 3071.0), l)
    });
    let geometry = centred_geometry(cfg.size, inplane, slice, true);
    let liver_fraction = labels.iter().filter(|&&l| l > 0).count() as f32 / labels.len() as f32;
    let info = PhantomInfo {
        id: case.to_string(),
        difficulty,
        spacing: [inplane, inplane, slice],
        liver_hu: anatomy.liver_hu,
        tissue_hu: anatomy.tissue_hu,
        noise_sd: anatomy.noise_sd,
        liver_scale: scale,
        lesions: anatomy.lesions.len(),
        liver_fraction,
    };
    (image, labels, geometry, info)
}

/// Writes `cfg.cases` phantoms into `out` in the LiTS layout (`volume-K.nii.gz`, `segmentation-K.nii.gz`)
/// plus `phantoms.json`. `progress` is called after each case.
pub fn synthesize(out: &Path, cfg: &SynthConfig, progress: &(dyn Fn(usize) + Sync)) -> Result<Vec<PhantomInfo>> {
    if cfg.cases == 0 {
        return Err(Error::invalid("--cases", "must be at least 1"));
    }
    if cfg.size.iter().any(|&s| !(8..=1024).contains(&s)) {
        return Err(Error::invalid("--size", format!("{:?}: each extent must be in 8..=1024", cfg.size)));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if !(cfg.max_difficulty > 0.0 && cfg.max_difficulty <= 1.0) {
        return Err(Error::invalid("--max-difficulty", format!("{} must be in (0, 1]", cfg.max_difficulty)));
    }
    let difficulty = difficulties(cfg.cases, cfg.seed, cfg.max_difficulty);
    let mut infos = Vec::with_capacity(cfg.cases);
    for (k, &d) in difficulty.iter().enumerate() {
        let (image, labels, geometry, info) = match cfg.family {
            Family::Ct => phantom(k, d, cfg),
            Family::Mr => head::phantom(k, d, cfg),
        };
        write_image_i16(&out.join(format!("volume-{k}.nii.gz")), &image, &geometry)?;
        write_labels(&out.join(format!("segmentation-{k}.nii.gz")), &labels, &geometry)?;
        infos.push(info);
        progress(k + 1);
    }
    let json = serde_json::to_vec_pretty(&infos).expect("phantom info serialises");
    crate::atomic::write_bytes_atomically(&out.join("phantoms.json"), &json)?;
    Ok(infos)
}

/// Paths of case `k` in a synthesised folder.
pub fn case_paths(dir: &Path, k: usize) -> (PathBuf, PathBuf) {
    (dir.join(format!("volume-{k}.nii.gz")), dir.join(format!("segmentation-{k}.nii.gz")))
}
