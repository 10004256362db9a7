//! T1-like MR head phantoms with a brain label (white matter 1, the grey-matter ribbon 2): the second
//! synthetic family. Everything differs from
//! the CT family on purpose — arbitrary intensity units with a multiplicative bias field (so training
//! uses `--intensity zscore`), a large folded structure instead of a liver, near-isotropic 1 mm
//! spacing — so that defaults tuned on the CT phantoms can be checked on data they were not tuned on.

use ndarray::Array3;
use rand::Rng;

use super::{case_rng, centred_geometry, lerp, render, Deformation, Ellipsoid, PhantomInfo, SynthConfig};
use crate::input::volume::Geometry;

/// Intensities in arbitrary scanner units (T1-like: fat bright, white matter brighter than grey, CSF
/// and bone dark).
mod units {
    pub const SCALP_FAT: f32 = 950.0;
    pub const SKULL: f32 = 120.0;
    pub const CSF: f32 = 260.0;
    pub const WHITE_MATTER: f32 = 760.0;
    pub const BACKGROUND: f32 = 15.0;
}

struct Head {
    head: Ellipsoid,
    brain_warp: Deformation,
    gyri: Deformation,
    ventricles: [Ellipsoid; 2],
    grey: f32,
    bias: Deformation,
    bias_strength: f32,
    noise_sd: f32,
}

impl Head {
    fn draw(rng: &mut rand_chacha::ChaCha8Rng, d: f32) -> (Head, f32) {
        let scale = rng.random_range(0.88..1.0);
        let j = |rng: &mut rand_chacha::ChaCha8Rng, s: f32| rng.random_range(-s..s);
        let head = Ellipsoid {
            centre: [j(rng, 0.03), j(rng, 0.03), j(rng, 0.03)],
            axes: [0.78 * scale, 0.92 * scale, 0.85 * scale],
        };
        let v = rng.random_range(0.05..0.1) * lerp(0.8, 1.4, d);
        let ventricles = [
            Ellipsoid { centre: [-0.08, -0.05, 0.05], axes: [v, 0.25 * scale, 0.12] },
            Ellipsoid { centre: [0.08, -0.05, 0.05], axes: [v, 0.25 * scale, 0.12] },
        ];
        let h = Head {
            head,
            brain_warp: Deformation::random(rng, 0.04),
            gyri: Deformation::random(rng, 1.0),
            ventricles,
            grey: lerp(560.0, 430.0, d) + j(rng, 15.0),
            bias: Deformation::random(rng, 1.0),
            bias_strength: lerp(0.05, 0.25, d),
            noise_sd: lerp(12.0, 55.0, d) * rng.random_range(0.9..1.1),
        };
        (h, scale)
    }

    /// Intensity (before bias and noise) and label at normalised coordinates.
    fn sample(&self, p: [f32; 3]) -> (f32, u8) {
        let r = self.head.level(p);
        if r > 1.0 {
            return (units::BACKGROUND, 0);
        }
        if r > 0.82 {
            return (units::SCALP_FAT, 0);
        }
        if r > 0.68 {
            return (units::SKULL, 0);
        }
        let q = self.brain_warp.apply(p);
        // Folded cortex: the brain's edge moves in and out with a high-frequency wave.
        let t = self.gyri.apply([p[0] * 4.0, p[1] * 4.0, p[2] * 4.0]);
        let fold = 0.05 * ((t[0] - p[0] * 4.0).sin() + (t[1] - p[1] * 4.0).cos());
        if self.head.level(q) > 0.58 + fold || self.ventricles.iter().any(|v| v.level(q) < 1.0) {
            return (units::CSF, 0);
        }
        // Grey matter near the surface (label 2: a thin folded ribbon), white matter inside (label 1).
        // `--labels merge` (the default) trains on the whole brain.
        if self.head.level(q) > 0.36 + fold {
            (self.grey, 2)
        } else {
            (units::WHITE_MATTER, 1)
        }
    }
}

/// Renders one MR head phantom: image (arbitrary units), labels (white matter 1, grey matter 2),
/// geometry and parameters.
pub fn phantom(case: usize, difficulty: f32, cfg: &SynthConfig) -> (Array3<i16>, Array3<u8>, Geometry, PhantomInfo) {
    let mut rng = case_rng(cfg.seed ^ 0x4d52, case, 0);
    let inplane: f64 = rng.random_range(0.9..1.2);
    let slice: f64 = rng.random_range(1.0..1.5);
    let (head, scale) = Head::draw(&mut rng, difficulty);
    let (image, labels) = render(cfg.size, (cfg.seed ^ 0x4d52, case), head.noise_sd, |p, n| {
        let (v, l) = head.sample(p);
        let b = head.bias.apply([p[0] * 0.7, p[1] * 0.7, p[2] * 0.7]);
        let bias = 1.0 + head.bias_strength * (b[0] - p[0] * 0.7).sin();
        // Magnitude images: the noise folds at zero (Rician-like).
        ((v * bias + n).abs().round().clamp(0.0, 4000.0), l)
    });
    let geometry = centred_geometry(cfg.size, inplane, slice, false);
    let fraction = labels.iter().filter(|&&l| l > 0).count() as f32 / labels.len() as f32;
    let info = PhantomInfo {
        id: case.to_string(),
        difficulty,
        spacing: [inplane, inplane, slice],
        liver_hu: head.grey,
        tissue_hu: units::CSF,
        noise_sd: head.noise_sd,
        liver_scale: scale,
        lesions: 0,
        liver_fraction: fraction,
    };
    (image, labels, geometry, info)
}
