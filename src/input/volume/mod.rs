//! CT/MR volumes: NIfTI-1 in and out, with the geometry needed to write results that overlay the input.
//!
//! **Axis convention, stated once for the whole project.** NIfTI stores voxel (i, j, k) with i fastest.
//! In memory a volume is a C-order array indexed `[k, j, i]`, which we call `[D, H, W]`: D = slices (z),
//! H = rows (y), W = columns (x). This is the byte order of the file, so no transposition happens on
//! read or write, and it is the `[N, C, D, H, W]` layout of the networks. Spacings are kept in NIfTI
//! order `(x, y, z)` = pixdim[1..4]; [`Geometry::spacing_dhw`] gives them in array order.

mod read;
mod write;

pub use read::{read_geometry, read_volume, NonFinite, ReadOptions, DEFAULT_MAX_VOXELS};
pub use write::{write_image_i16, write_label_map, write_labels};

use ndarray::Array3;

/// Where a voxel grid sits in the world, and the header to copy when writing results on the same grid.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Array shape `[D, H, W]`.
    pub shape: [usize; 3],
    /// Voxel size in mm, NIfTI order `(x, y, z)`.
    pub spacing: [f64; 3],
    /// Voxel index `(i, j, k, 1)` → world mm; sform if set, else qform, else spacing alone.
    pub affine: [[f64; 4]; 4],
    pub(crate) header: nifti::NiftiHeader,
}

impl Geometry {
    /// A geometry for a new volume: `affine` goes to both sform and qform (code scanner-anatomical), as
    /// scanners and converters such as dcm2niix write them, so every viewer reads the same placement.
    pub fn new(shape: [usize; 3], affine: [[f64; 4]; 4]) -> Self {
        let m = nalgebra::Matrix4::from_fn(|r, c| affine[r][c]);
        let mut header = nifti::NiftiHeader::default();
        header.set_sform(&m, nifti::XForm::ScannerAnat);
        header.set_qform(&m, nifti::XForm::ScannerAnat);
        header.xyzt_units = nifti::Unit::Mm as u8;
        let spacing = [0, 1, 2].map(|c| (0..3).map(|r| affine[r][c] * affine[r][c]).sum::<f64>().sqrt());
        for (a, s) in spacing.iter().enumerate() {
            header.pixdim[a + 1] = *s as f32;
        }
        header.dim = [3, shape[2] as u16, shape[1] as u16, shape[0] as u16, 1, 1, 1, 1];
        Geometry { shape, spacing, affine, header }
    }

    /// Spacing in array order `[D, H, W]` = `(z, y, x)`.
    pub fn spacing_dhw(&self) -> [f64; 3] {
        [self.spacing[2], self.spacing[1], self.spacing[0]]
    }

    /// Number of voxels.
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// The NIfTI header this geometry came from (dims, pixdim, qform/sform codes and matrices).
    pub fn header(&self) -> &nifti::NiftiHeader {
        &self.header
    }
}

/// An image in world units (HU for CT) after `scl_slope`/`scl_inter`, with its geometry.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Voxel values, `[D, H, W]`.
    pub data: Array3<f32>,
    /// Where the voxels are.
    pub geometry: Geometry,
}
