//! From the slices' positions and orientations to one voxel grid: slices sorted along the normal of
//! their orientation, the spacing between them from their positions (not SliceThickness), and the
//! NIfTI affine the way dcm2niix writes it. Series that are not one regular grid are refused with the
//! reason.

/// One image plane of a series: a single-frame file, or one frame of a multi-frame file.
#[derive(Debug, Clone)]
pub(crate) struct Plane {
    /// Index into the series' files.
    pub file: usize,
    /// Frame within the file (0 for single-frame files).
    pub frame: u32,
    /// ImagePositionPatient: the centre of the first transmitted pixel, LPS mm.
    pub position: [f64; 3],
    /// ImageOrientationPatient: row direction (along a row, columns increasing), then column direction.
    pub orientation: [f64; 6],
    /// PixelSpacing: between rows, then between columns, mm.
    pub spacing: [f64; 2],
    pub rows: u32,
    pub columns: u32,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
}

/// A series laid out as one volume.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    /// Planes in volume order: slice k of the volume is `planes[k]`.
    pub planes: Vec<Plane>,
    /// `[D, H, W]` = slices, rows, columns.
    pub shape: [usize; 3],
    /// Voxel index `(i, j, k)` → RAS mm, with j counting rows from the last one (dcm2niix's layout).
    pub affine: [[f64; 4]; 4],
}

/// Orientations whose direction cosines differ by more than this are different orientations.
const ORIENTATION_TOLERANCE: f64 = 1e-4;
/// Slice gaps may differ from their mean by this fraction (positions are written as decimal strings).
const GAP_TOLERANCE: f64 = 0.01;
/// Slices may sit this far (mm) beside the line along the normal through the first one.
const LATERAL_TOLERANCE_MM: f64 = 0.01;

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Lays `planes` out as one grid, or says why they are not one.
pub(crate) fn grid(mut planes: Vec<Plane>) -> Result<Grid, String> {
    let first = planes.first().ok_or("no image planes")?.clone();
    check_alike(&planes, &first)?;
    if planes.len() < 2 {
        return Err("a series of one slice; the model needs a 3D volume".into());
    }
    let row = [first.orientation[0], first.orientation[1], first.orientation[2]];
    let col = [first.orientation[3], first.orientation[4], first.orientation[5]];
    let normal = cross(row, col);
    if (norm(normal) - 1.0).abs() > 1e-3 || dot(row, col).abs() > 1e-3 {
        return Err(format!("ImageOrientationPatient {:?} is not two orthogonal unit vectors", first.orientation));
    }
    planes.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    check_spacing(&planes, normal)?;
    let n = planes.len();
    let (p0, last) = (planes[0].position, planes[n - 1].position);
    let step = sub(last, p0).map(|v| v / (n - 1) as f64);
    let (ps_row, ps_col) = (first.spacing[0], first.spacing[1]);
    let rows = first.rows as usize;
    // LPS: i along the row direction, j up the rows from the last one, k along the slices.
    let i = row.map(|v| v * ps_col);
    let j = col.map(|v| -v * ps_row);
    let origin = [0, 1, 2].map(|a| p0[a] + (rows - 1) as f64 * ps_row * col[a]);
    let ras = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let (i, j, k, o) = (ras(i), ras(j), ras(step), ras(origin));
    let affine = [[i[0], j[0], k[0], o[0]], [i[1], j[1], k[1], o[1]], [i[2], j[2], k[2], o[2]], [0.0, 0.0, 0.0, 1.0]];
    Ok(Grid { shape: [n, rows, first.columns as usize], affine, planes })
}

/// Same size, pixel spacing and orientation on every plane.
fn check_alike(planes: &[Plane], first: &Plane) -> Result<(), String> {
    for p in planes {
        if (p.rows, p.columns) != (first.rows, first.columns) {
            return Err(format!(
                "slices of different sizes ({}×{} and {}×{})",
                first.rows, first.columns, p.rows, p.columns
            ));
        }
        if p.orientation.iter().zip(&first.orientation).any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE) {
            return Err(format!(
                "mixed orientations: ImageOrientationPatient {:?} and {:?} (one volume needs one orientation)",
                round(&first.orientation),
                round(&p.orientation)
            ));
        }
        if p.spacing.iter().zip(&first.spacing).any(|(a, b)| (a - b).abs() > 1e-4 * b.abs().max(1.0)) {
            return Err(format!("mixed pixel spacings: {:?} and {:?} mm", first.spacing, p.spacing));
        }
        if !p.spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(format!("PixelSpacing {:?} is not positive", p.spacing));
        }
    }
    Ok(())
}

fn round(v: &[f64; 6]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
}

/// Slices along the normal (no gantry tilt), none at the same place, evenly spaced.
fn check_spacing(planes: &[Plane], normal: [f64; 3]) -> Result<(), String> {
    let at: Vec<f64> = planes.iter().map(|p| dot(p.position, normal)).collect();
    let n = planes.len();
    let mean = (at[n - 1] - at[0]) / (n - 1) as f64;
    for (k, p) in planes.iter().enumerate() {
        let along = sub(p.position, planes[0].position);
        let lateral = norm(sub(along, normal.map(|v| v * dot(along, normal))));
        if lateral > LATERAL_TOLERANCE_MM.max(1e-4 * norm(along)) {
            let angle = lateral.atan2(dot(along, normal)).to_degrees().abs();
            return Err(format!(
                "gantry tilt: slice {k} sits {lateral:.2} mm beside the normal through the first ({angle:.1}°); \
                 resample the series to an orthogonal grid first"
            ));
        }
    }
    for k in 1..n {
        let gap = at[k] - at[k - 1];
        if gap < 1e-3 {
            return Err(format!(
                "two slices at the same position ({:.3} mm along the normal): several volumes in one series \
                 (echoes, phases or repeats) are not supported",
                at[k]
            ));
        }
        if (gap - mean).abs() > GAP_TOLERANCE * mean {
            return Err(format!(
                "uneven slice spacing: {gap:.3} mm between slices at {:.3} and {:.3} mm where the series steps \
                 {mean:.3} mm on average (a missing slice?)",
                at[k - 1],
                at[k]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(z: f64, x: f64) -> Plane {
        Plane {
            file: 0,
            frame: 0,
            position: [x, 0.0, z],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            spacing: [0.5, 0.25],
            rows: 4,
            columns: 3,
            sop_instance_uid: String::new(),
            sop_class_uid: String::new(),
        }
    }

    #[test]
    fn sorts_along_the_normal_and_maps_lps_to_ras() {
        let g = grid(vec![plane(5.0, 0.0), plane(1.0, 0.0), plane(3.0, 0.0)]).expect("a regular series");
        assert_eq!(g.shape, [3, 4, 3]);
        assert_eq!(g.planes.iter().map(|p| p.position[2]).collect::<Vec<_>>(), [1.0, 3.0, 5.0]);
        // i: −x (LPS → RAS) × column spacing; j: rows counted up from the last, +y in RAS.
        assert_eq!(g.affine[0][0], -0.25);
        assert_eq!(g.affine[1][1], 0.5);
        assert_eq!(g.affine[2][2], 2.0);
        assert_eq!([g.affine[0][3], g.affine[1][3], g.affine[2][3]], [0.0, -1.5, 1.0]);
    }

    #[test]
    fn refuses_tilt_gaps_and_duplicates() {
        let tilt = grid(vec![plane(0.0, 0.0), plane(2.0, 0.5), plane(4.0, 1.0)]).expect_err("refused");
        assert!(tilt.contains("gantry tilt"), "{tilt}");
        let gap = grid(vec![plane(0.0, 0.0), plane(2.0, 0.0), plane(6.0, 0.0)]).expect_err("refused");
        assert!(gap.contains("uneven slice spacing"), "{gap}");
        let dup = grid(vec![plane(0.0, 0.0), plane(0.0, 0.0)]).expect_err("refused");
        assert!(dup.contains("same position"), "{dup}");
        assert!(grid(vec![plane(0.0, 0.0)]).expect_err("refused").contains("one slice"));
    }
}
