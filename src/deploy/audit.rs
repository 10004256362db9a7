//! Knowing when to trust a path. Audit runs: for a fraction of the volumes the full network runs too,
//! and the reduced path's labels are compared with its labels. The guard's outcome: how far a volume's
//! policy input lies from the volumes the bundle was calibrated on. In production this is the signal that says whether the policy's paths
//! still agree with the network they were cut from, volume by volume.
//!
//! Which volumes are audited follows from their voxels (a hash of the values, whatever the file's name
//! or compression), so a re-run audits the same ones and two replicas of the service agree.

use sha2::{Digest, Sha256};

/// How often, and what happens when a path disagrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Audit {
    /// Fraction of volumes audited, in [0, 1].
    pub fraction: f64,
    /// Below this agreement (foreground Dice of the path's labels against the full network's), the
    /// full network's labels are the answer.
    pub min_agreement: f64,
}

impl Audit {
    /// The default agreement below which the full network's labels are used.
    pub const DEFAULT_MIN_AGREEMENT: f64 = 0.95;

    /// Checks the settings: `what` names the options in the message.
    pub fn new(fraction: f64, min_agreement: f64) -> crate::error::Result<Audit> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(crate::error::Error::invalid("--audit", format!("{fraction} is not a fraction in [0, 1]")));
        }
        if !min_agreement.is_finite() {
            return Err(crate::error::Error::invalid("--audit-min", format!("{min_agreement} is not a number")));
        }
        Ok(Audit { fraction, min_agreement })
    }

    /// Whether the volume with these voxel values is audited: the first 8 bytes of the SHA-256 of the
    /// values (little-endian f32) as a fraction of 2⁶⁴, below `fraction`.
    pub fn selects(&self, voxels: &[f32]) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        if self.fraction >= 1.0 {
            return true;
        }
        let mut h = Sha256::new();
        for chunk in voxels.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            h.update(&bytes);
        }
        let digest = h.finalize();
        let head = u64::from_le_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"));
        (head as f64) / 2f64.powi(64) < self.fraction
    }
}

/// What an audit found for one volume.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AuditOutcome {
    /// Foreground Dice of the path's labels against the full network's.
    pub agreement: f64,
    /// Seconds the audit added (the full network's tiles, blending and labels).
    pub seconds: f64,
    /// Whether the answer is the full network's labels (agreement below the minimum).
    pub answered_full: bool,
}

/// What the guard found for one volume (`--guard`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GuardOutcome {
    /// Distance of the policy input's features from the calibration volumes', in standard deviations.
    pub distance: f64,
    /// The bundle's bound.
    pub bound: f64,
    /// Whether the volume was beyond it and so took the full network.
    pub tripped: bool,
}
