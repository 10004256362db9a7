//! Reading NIfTI-1 and NIfTI-2 without trusting the header: every size is checked before anything is
//! allocated.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use ndarray::Array3;
use nifti::{Endianness, NiftiHeader, NiftiType};

use super::{Geometry, Volume};
use crate::error::{Error, Result, VolumeError};

/// 512 × 512 × 2000 voxels: larger than any CT series we expect, small enough to fail before a lying
/// header makes us allocate tens of gigabytes.
pub const DEFAULT_MAX_VOXELS: u64 = 512 * 512 * 2000;

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Refuse images with more voxels than this (checked on the header, before allocation).
    pub max_voxels: u64,
    /// What to do with NaN or infinite voxels (after scaling).
    pub non_finite: NonFinite,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { max_voxels: DEFAULT_MAX_VOXELS, non_finite: NonFinite::Refuse }
    }
}

/// NaN or infinite voxels: refused by default (they poison every normalisation), or replaced, which
/// suits the NaN background that resampling tools leave outside the field of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum NonFinite {
    /// An error naming the file, the count and the first index.
    #[default]
    Refuse,
    /// Replace with 0.
    Zero,
    /// Replace with the volume's smallest finite value (air in CT, background in MR).
    Min,
}

impl std::str::FromStr for NonFinite {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "refuse" => Ok(NonFinite::Refuse),
            "zero" => Ok(NonFinite::Zero),
            "min" => Ok(NonFinite::Min),
            _ => Err(format!("{s:?}: expected refuse, zero or min")),
        }
    }
}

const HEADER_BYTES: u64 = 348;
/// NIfTI-2: 540 bytes, 64-bit dims and offsets, f64 geometry (nibabel writes it for large images).
const HEADER2_BYTES: u64 = 540;

fn open(path: &Path) -> Result<Box<dyn Read>> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".hdr") || name.ends_with(".img") || name.ends_with(".hdr.gz") || name.ends_with(".img.gz") {
        return Err(Error::volume(path, VolumeError::HeaderPair));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    // Decide by content, not by name: servers and users rename files.
    let mut magic = [0u8; 2];
    let peeked = peek(&mut reader, &mut magic).map_err(|e| Error::io(path, e))?;
    if peeked == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

fn peek(reader: &mut BufReader<File>, out: &mut [u8; 2]) -> std::io::Result<usize> {
    use std::io::BufRead;
    let buf = reader.fill_buf()?;
    let n = buf.len().min(2);
    out[..n].copy_from_slice(&buf[..n]);
    Ok(n)
}

/// Reads exactly `buf.len()` bytes; a short read is reported as truncation of `what`.
fn read_full(path: &Path, reader: &mut dyn Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(Error::volume(
                    path,
                    VolumeError::Truncated { what, expected: buf.len() as u64, found: filled as u64 },
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput || e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::volume(path, VolumeError::Gzip(e.to_string())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Error::volume(
                    path,
                    VolumeError::Truncated { what, expected: buf.len() as u64, found: filled as u64 },
                ))
            }
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(())
}

/// Reads the header (NIfTI-1 or NIfTI-2) and returns it as a NIfTI-1 header with its length in the
/// file.
fn parse_header(path: &Path, reader: &mut dyn Read) -> Result<(NiftiHeader, u64)> {
    let mut raw = [0u8; HEADER_BYTES as usize];
    read_full(path, reader, &mut raw, "header")?;
    let size_le = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if (size_le == HEADER2_BYTES as i32 || size_le.swap_bytes() == HEADER2_BYTES as i32) && &raw[4..8] == b"n+2\0" {
        let mut rest = [0u8; (HEADER2_BYTES - HEADER_BYTES) as usize];
        read_full(path, reader, &mut rest, "header")?;
        let mut full = raw.to_vec();
        full.extend_from_slice(&rest);
        return Ok((nifti2(path, &full, size_le == HEADER2_BYTES as i32)?, HEADER2_BYTES));
    }
    let magic = [raw[344], raw[345], raw[346], raw[347]];
    if &magic != b"n+1\0" && &magic != b"ni1\0" {
        return Err(Error::volume(path, VolumeError::BadMagic(magic)));
    }
    if &magic == b"ni1\0" {
        return Err(Error::volume(path, VolumeError::HeaderPair));
    }
    // NIfTI tells byte order by sizeof_hdr; check it ourselves so that a bad dim[0] is reported as
    // such rather than as a byte-swapped header.
    let size_le = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let little = match (size_le == HEADER_BYTES as i32, size_le.swap_bytes() == HEADER_BYTES as i32) {
        (true, _) => true,
        (false, true) => false,
        _ => return Err(Error::volume(path, VolumeError::BadHeaderSize(size_le))),
    };
    let dims: Vec<u16> = (0..8)
        .map(|i| {
            let b = [raw[40 + 2 * i], raw[41 + 2 * i]];
            if little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        })
        .collect();
    if !(1..=7).contains(&dims[0]) {
        return Err(Error::volume(path, VolumeError::NotThreeD { dims }));
    }
    let mut header =
        NiftiHeader::from_reader(&raw[..]).map_err(|e| Error::volume(path, VolumeError::Gzip(e.to_string())))?;
    // qfac outside ±1 is common in the wild; NIfTI says treat it as 1.
    header.fix();
    Ok((header, HEADER_BYTES))
}

/// A NIfTI-2 header as the NIfTI-1 header the rest of the reader works with. Geometry goes from f64 to
/// f32 (well below a micrometre for any scanner's coordinates); a dimension beyond NIfTI-1's 65 535 is
/// refused as too large.
fn nifti2(path: &Path, b: &[u8], little: bool) -> Result<NiftiHeader> {
    // Readers of one field at a byte offset, in the header's byte order.
    macro_rules! field {
        ($t:ty) => {
            |o: usize| {
                let a = b[o..o + std::mem::size_of::<$t>()].try_into().expect("field within the header");
                if little {
                    <$t>::from_le_bytes(a)
                } else {
                    <$t>::from_be_bytes(a)
                }
            }
        };
    }
    let (f64_at, i64_at, i32_at, i16_at) = (field!(f64), field!(i64), field!(i32), field!(i16));
    let dim64: Vec<i64> = (0..8).map(|i| i64_at(16 + 8 * i)).collect();
    let saturated: Vec<u16> = dim64.iter().map(|&d| d.clamp(0, u16::MAX as i64) as u16).collect();
    if !(1..=7).contains(&dim64[0]) {
        return Err(Error::volume(path, VolumeError::NotThreeD { dims: saturated }));
    }
    let n = dim64[0] as usize;
    if dim64[1..=n].iter().any(|&d| d < 0 || d > u16::MAX as i64) {
        let voxels = dim64[1..=n.min(3)].iter().fold(1u64, |acc, &d| acc.saturating_mul(d.max(0) as u64));
        return Err(Error::volume(
            path,
            VolumeError::TooManyVoxels { dims: saturated[1..=n].to_vec(), voxels, limit: u16::MAX as u64 },
        ));
    }
    let mut h = NiftiHeader {
        sizeof_hdr: HEADER_BYTES as i32,
        dim: std::array::from_fn(|i| dim64[i] as u16),
        datatype: i16_at(12),
        bitpix: i16_at(14),
        pixdim: std::array::from_fn(|i| f64_at(104 + 8 * i) as f32),
        vox_offset: i64_at(168) as f32,
        scl_slope: f64_at(176) as f32,
        scl_inter: f64_at(184) as f32,
        qform_code: i32_at(344) as i16,
        sform_code: i32_at(348) as i16,
        quatern_b: f64_at(352) as f32,
        quatern_c: f64_at(360) as f32,
        quatern_d: f64_at(368) as f32,
        quatern_x: f64_at(376) as f32,
        quatern_y: f64_at(384) as f32,
        quatern_z: f64_at(392) as f32,
        srow_x: std::array::from_fn(|i| f64_at(400 + 8 * i) as f32),
        srow_y: std::array::from_fn(|i| f64_at(432 + 8 * i) as f32),
        srow_z: std::array::from_fn(|i| f64_at(464 + 8 * i) as f32),
        xyzt_units: i32_at(500).clamp(0, 255) as u8,
        magic: *b"n+1\0",
        endianness: if little { Endianness::Little } else { Endianness::Big },
        ..NiftiHeader::default()
    };
    h.fix();
    Ok(h)
}

/// Validated facts from a header: what we need to read the data and place it in the world.
struct Layout {
    shape: [usize; 3],
    datatype: NiftiType,
    data_offset: u64,
    voxels: u64,
}

fn validate(path: &Path, h: &NiftiHeader, header_len: u64, opts: &ReadOptions) -> Result<Layout> {
    let bad = |kind| Err(Error::volume(path, kind));
    let ndim = h.dim[0] as usize;
    let dims: Vec<u16> = h.dim[1..=ndim.min(7)].to_vec();
    let three_d = match ndim {
        3 => true,
        4 => h.dim[4] == 1,
        5..=7 => h.dim[4..=ndim].iter().all(|&d| d == 1),
        _ => false,
    };
    if !three_d {
        return bad(VolumeError::NotThreeD { dims });
    }
    if h.dim[1..=3].contains(&0) {
        return bad(VolumeError::ZeroExtent { dims });
    }
    let voxels = h.dim[1..=3].iter().map(|&d| d as u64).product::<u64>();
    if voxels > opts.max_voxels {
        return bad(VolumeError::TooManyVoxels { dims, voxels, limit: opts.max_voxels });
    }
    let datatype = match h.data_type() {
        Ok(
            t @ (NiftiType::Uint8
            | NiftiType::Int16
            | NiftiType::Uint16
            | NiftiType::Int32
            | NiftiType::Float32
            | NiftiType::Float64),
        ) => t,
        _ => return bad(VolumeError::UnsupportedDatatype(h.datatype)),
    };
    let expected_bits = (datatype.size_of() * 8) as i16;
    if h.bitpix != expected_bits {
        return bad(VolumeError::BitpixMismatch { datatype: h.datatype, bitpix: h.bitpix, expected: expected_bits });
    }
    let off = h.vox_offset;
    if !off.is_finite() || off < (header_len + 4) as f32 || off.fract() != 0.0 || off > 1.0e8 {
        return bad(VolumeError::BadVoxOffset(off));
    }
    let spacing = [h.pixdim[1], h.pixdim[2], h.pixdim[3]];
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return bad(VolumeError::BadPixdim(spacing));
    }
    for (field, values) in [
        ("scl_slope/scl_inter", &[h.scl_slope, h.scl_inter][..]),
        ("srow_x/srow_y/srow_z", &[h.srow_x, h.srow_y, h.srow_z].concat()[..]),
        ("quatern_b/c/d/x/y/z", &[h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z][..]),
    ] {
        if values.iter().any(|v| !v.is_finite()) {
            return bad(VolumeError::NonFiniteField { field });
        }
    }
    let shape = [h.dim[3] as usize, h.dim[2] as usize, h.dim[1] as usize];
    Ok(Layout { shape, datatype, data_offset: off as u64, voxels })
}

fn geometry(h: &NiftiHeader, shape: [usize; 3]) -> Geometry {
    let m: nalgebra::Matrix4<f64> = if h.sform_code > 0 {
        h.sform_affine()
    } else if h.qform_code > 0 {
        h.qform_affine()
    } else {
        // NIfTI "method 1": voxel index scaled by pixdim, no origin.
        nalgebra::Matrix4::from_diagonal(&nalgebra::Vector4::new(
            h.pixdim[1] as f64,
            h.pixdim[2] as f64,
            h.pixdim[3] as f64,
            1.0,
        ))
    };
    let affine = std::array::from_fn(|r| std::array::from_fn(|c| m[(r, c)]));
    let spacing = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
    let mut header = h.clone();
    // Downstream we only ever write 3D volumes on this grid.
    header.dim = [3, h.dim[1], h.dim[2], h.dim[3], 1, 1, 1, 1];
    Geometry { shape, spacing, affine, header }
}

/// Reads only the header: shape, spacing and affine, validated as [`read_volume`] would.
pub fn read_geometry(path: &Path, opts: &ReadOptions) -> Result<Geometry> {
    let mut reader = open(path)?;
    let (header, header_len) = parse_header(path, reader.as_mut())?;
    let layout = validate(path, &header, header_len, opts)?;
    Ok(geometry(&header, layout.shape))
}

/// Reads a 3D NIfTI-1 or NIfTI-2 image (`.nii` or gzip-compressed, detected by content) as `f32` world
/// values.
pub fn read_volume(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    let mut reader = open(path)?;
    let (header, header_len) = parse_header(path, reader.as_mut())?;
    let layout = validate(path, &header, header_len, opts)?;

    // Skip extensions between the header and the data.
    let gap = layout.data_offset - header_len;
    let copied = std::io::copy(&mut reader.as_mut().take(gap), &mut std::io::sink()).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
            Error::volume(path, VolumeError::Gzip(e.to_string()))
        }
        _ => Error::io(path, e),
    })?;
    if copied < gap {
        return Err(Error::volume(
            path,
            VolumeError::Truncated { what: "header extensions", expected: gap, found: copied },
        ));
    }

    let bytes_per = layout.datatype.size_of();
    let mut raw = vec![0u8; layout.voxels as usize * bytes_per];
    read_full(path, reader.as_mut(), &mut raw, "voxel data")?;
    let values = decode(&raw, layout.datatype, header.endianness);

    // NIfTI: slope 0 means "no scaling".
    let (slope, inter) = if header.scl_slope == 0.0 { (1.0, 0.0) } else { (header.scl_slope, header.scl_inter) };
    let mut data: Vec<f32> = values;
    if slope != 1.0 || inter != 0.0 {
        data.iter_mut().for_each(|v| *v = *v * slope + inter);
    }
    replace_non_finite(path, &mut data, opts.non_finite)?;
    let data = Array3::from_shape_vec(layout.shape, data).expect("length equals product of validated dims");
    Ok(Volume { data, geometry: geometry(&header, layout.shape) })
}

fn replace_non_finite(path: &Path, data: &mut [f32], policy: NonFinite) -> Result<()> {
    let mut bad = data.iter().enumerate().filter(|(_, v)| !v.is_finite());
    let Some((first, _)) = bad.next() else { return Ok(()) };
    let count = 1 + bad.count();
    let value = match policy {
        NonFinite::Refuse => return Err(Error::volume(path, VolumeError::NonFiniteVoxels { count, first })),
        NonFinite::Zero => 0.0,
        NonFinite::Min => data
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .reduce(f32::min)
            .ok_or_else(|| Error::volume(path, VolumeError::NonFiniteVoxels { count, first }))?,
    };
    data.iter_mut().filter(|v| !v.is_finite()).for_each(|v| *v = value);
    Ok(())
}

fn decode(raw: &[u8], datatype: NiftiType, endianness: Endianness) -> Vec<f32> {
    let little = endianness == Endianness::Little;
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n)
                .map(|c| {
                    let b: [u8; $n] = c.try_into().expect("chunk size");
                    (if little { <$t>::from_le_bytes(b) } else { <$t>::from_be_bytes(b) }) as f32
                })
                .collect()
        };
    }
    match datatype {
        NiftiType::Uint8 => raw.iter().map(|&b| b as f32).collect(),
        NiftiType::Int16 => conv!(i16, 2),
        NiftiType::Uint16 => conv!(u16, 2),
        NiftiType::Int32 => conv!(i32, 4),
        NiftiType::Float32 => conv!(f32, 4),
        NiftiType::Float64 => conv!(f64, 8),
        _ => unreachable!("datatype validated before decoding"),
    }
}
