//! Figures of the evaluation report (PNG and SVG with plotters) and slice overlays of segmentations.
//!
//! Chart text needs a TrueType font (plotters measures text even for SVG): the first of a few usual
//! system paths (or `AUTOPATH_FONT`) is registered once. Without one, charts are skipped with a
//! warning; tables and overlays (no text) are still written.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array3, Axis};
use plotters::prelude::*;

use crate::error::{Error, Result};

fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("AUTOPATH_FONT").map(PathBuf::from).into_iter().collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            ]
            .map(PathBuf::from),
        );
        for c in candidates {
            if let Ok(bytes) = std::fs::read(&c) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        eprintln!(
            "warning: no TrueType font found (install fonts-dejavu-core or set AUTOPATH_FONT); charts are skipped"
        );
        false
    })
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::invalid("figure", e.to_string())
}

/// One line of a chart: label, points, colour, and optional vertical error bars (± value).
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: RGBColor,
    /// Optional `(low, high)` per point, drawn as a band.
    pub band: Option<Vec<(f64, f64)>>,
    /// Draw markers only, no line.
    pub markers_only: bool,
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x: (f64, f64),
    y: (f64, f64),
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| e.to_string())?;
    for s in series {
        let c = s.color;
        if let Some(band) = &s.band {
            let poly: Vec<(f64, f64)> = s
                .points
                .iter()
                .zip(band)
                .map(|(p, b)| (p.0, b.1))
                .chain(s.points.iter().zip(band).rev().map(|(p, b)| (p.0, b.0)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled()))).map_err(|e| e.to_string())?;
        }
        let anno = if s.markers_only {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(|e| e.to_string())?
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2))).map_err(|e| e.to_string())?;
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|e| e.to_string())?
        };
        anno.label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A line/marker chart written as `stem.svg` and `stem.png`. Returns the files written.
pub fn line_chart(
    dir: &Path,
    stem: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: (f64, f64),
) -> Result<Vec<PathBuf>> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    // Integer axes (block indices) get half a unit of margin, fractions a few hundredths.
    let pad = if x1 - x0 <= 1.0 { 0.02 } else { 0.5 };
    let x = if x0.is_finite() { (x0 - pad, x1 + pad) } else { (0.0, 1.0) };
    let mut out = Vec::new();
    if !font_available() {
        return Ok(out);
    }
    let svg = dir.join(format!("{stem}.svg"));
    draw_lines(SVGBackend::new(&svg, (760, 480)).into_drawing_area(), title, x_label, y_label, series, x, y_range)
        .map_err(plot_err)?;
    out.push(svg);
    let png = dir.join(format!("{stem}.png"));
    draw_lines(BitMapBackend::new(&png, (760, 480)).into_drawing_area(), title, x_label, y_label, series, x, y_range)
        .map_err(plot_err)?;
    out.push(png);
    Ok(out)
}

fn draw_histogram<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    values: &[usize],
    max: usize,
    top: u32,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d((0u32..max as u32).into_segmented(), 0u32..top + 1)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(x_label).y_desc("volumes").draw().map_err(|e| e.to_string())?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(RGBColor(214, 39, 40).filled())
                .margin(6)
                .data(values.iter().map(|&v| (v as u32, 1))),
        )
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A histogram of integer values (e.g. blocks dropped per volume), as `stem.svg` / `stem.png`.
pub fn histogram(
    dir: &Path,
    stem: &str,
    title: &str,
    x_label: &str,
    values: &[usize],
    max: usize,
) -> Result<Vec<PathBuf>> {
    let mut counts = vec![0u32; max + 1];
    for &v in values {
        counts[v.min(max)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut out = Vec::new();
    if !font_available() {
        return Ok(out);
    }
    let svg = dir.join(format!("{stem}.svg"));
    draw_histogram(SVGBackend::new(&svg, (640, 420)).into_drawing_area(), title, x_label, values, max, top)
        .map_err(plot_err)?;
    out.push(svg);
    let png = dir.join(format!("{stem}.png"));
    draw_histogram(BitMapBackend::new(&png, (640, 420)).into_drawing_area(), title, x_label, values, max, top)
        .map_err(plot_err)?;
    out.push(png);
    Ok(out)
}

/// Outline colours of the overlays.
pub const TRUTH: [u8; 3] = [40, 220, 60];
/// Full-backbone prediction.
pub const FULL: [u8; 3] = [60, 140, 255];
/// AutoPath prediction.
pub const AUTOPATH: [u8; 3] = [255, 60, 40];

/// Writes a PNG of one axial slice (`axis` 0) or coronal slice (`axis` 1) of a CT volume (HU, window
/// [-200, 250]) with the outlines of several masks, each in its colour, scaled up by `zoom` (rows
/// are also stretched by `aspect` to respect anisotropic spacing).
pub fn overlay_png(
    path: &Path,
    ct: &Array3<f32>,
    masks: &[(&Array3<u8>, [u8; 3])],
    axis: usize,
    index: usize,
    zoom: u32,
    aspect: f64,
) -> Result<()> {
    let img = ct.index_axis(Axis(axis), index);
    let (rows, cols) = img.dim();
    let row_scale = ((zoom as f64) * aspect).round().max(1.0) as u32;
    let (w, h) = (cols as u32 * zoom, rows as u32 * row_scale);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let set = |buf: &mut [u8], r: usize, c: usize, rgb: [u8; 3]| {
        for dy in 0..row_scale {
            for dx in 0..zoom {
                let (y, x) = (r as u32 * row_scale + dy, c as u32 * zoom + dx);
                let o = ((y * w + x) * 3) as usize;
                buf[o..o + 3].copy_from_slice(&rgb);
            }
        }
    };
    for r in 0..rows {
        for c in 0..cols {
            let g = (((img[[r, c]] + 200.0) / 450.0).clamp(0.0, 1.0) * 255.0) as u8;
            set(&mut buf, r, c, [g, g, g]);
        }
    }
    for (mask, rgb) in masks {
        let m = mask.index_axis(Axis(axis), index);
        for r in 0..rows {
            for c in 0..cols {
                if m[[r, c]] == 0 {
                    continue;
                }
                let edge = r == 0
                    || c == 0
                    || r + 1 == rows
                    || c + 1 == cols
                    || m[[r - 1, c]] == 0
                    || m[[r + 1, c]] == 0
                    || m[[r, c - 1]] == 0
                    || m[[r, c + 1]] == 0;
                if edge {
                    set(&mut buf, r, c, *rgb);
                }
            }
        }
    }
    crate::atomic::write_atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (w, h)).into_drawing_area();
        for y in 0..h {
            for x in 0..w {
                let o = ((y * w + x) * 3) as usize;
                root.draw_pixel((x as i32, y as i32), &RGBColor(buf[o], buf[o + 1], buf[o + 2])).map_err(plot_err)?;
            }
        }
        root.present().map_err(plot_err)
    })
}
