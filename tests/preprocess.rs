//! Preprocessing and sliding windows: values against hand computations, coverage and exact stitching.

use autopath::input::preprocess::Preprocess;
use autopath::input::preprocess::{resample_linear, resample_nearest, Intensity, LabelMapping, Preprocessing};
use autopath::input::volume::{Geometry, Volume};
use autopath::input::window::{pad_to_patch, Accumulator, Blend, Coverage, WindowConfig};
use ndarray::{Array3, Array4, Axis};

fn volume(data: Array3<f32>, spacing_xyz: [f64; 3]) -> Volume {
    let shape: [usize; 3] = data.dim().into();
    let a = [
        [spacing_xyz[0], 0.0, 0.0, 0.0],
        [0.0, spacing_xyz[1], 0.0, 0.0],
        [0.0, 0.0, spacing_xyz[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    Volume { data, geometry: Geometry::new(shape, a) }
}

#[test]
fn ct_window_clips_to_minus_200_250_and_divides_by_200() {
    let data = Array3::from_shape_vec([1, 1, 5], vec![-1000.0, -200.0, 0.0, 100.0, 3000.0]).unwrap();
    let (x, rec) = Preprocessing::default().image(&volume(data, [1.0; 3])).unwrap();
    assert_eq!(x.iter().copied().collect::<Vec<_>>(), [-1.0, -1.0, 0.0, 0.5, 1.25]);
    assert_eq!(rec.pad_value, -1.0);
}

#[test]
fn zscore_uses_the_body_only() {
    // Background at the minimum (0) is excluded: body values 2, 4 → mean 3, std 1.
    let data = Array3::from_shape_vec([1, 1, 4], vec![0.0, 2.0, 4.0, 0.0]).unwrap();
    let p = Preprocessing { intensity: Intensity::Zscore, ..Default::default() };
    let (x, rec) = p.image(&volume(data, [1.0; 3])).unwrap();
    assert_eq!(x.iter().copied().collect::<Vec<_>>(), [-3.0, -1.0, 1.0, -3.0]);
    assert_eq!(rec.pad_value, -3.0);
}

#[test]
fn label_mapping_merges_or_keeps() {
    assert_eq!([0.0, 1.0, 2.0].map(|v| LabelMapping::Merge.map(v)), [0, 1, 1]);
    assert_eq!([0.0, 1.0, 2.0].map(|v| LabelMapping::Keep.map(v)), [0, 1, 2]);
}

#[test]
fn resampling_to_a_target_spacing_and_back_restores_the_grid() {
    // z spacing 4 mm resampled to 2 mm doubles the slices; a linear ramp stays linear inside.
    let data = Array3::from_shape_fn([4, 3, 3], |(z, _, _)| z as f32 * 10.0);
    let p = Preprocessing {
        target_spacing: Some([2.0, 1.0, 1.0]),
        intensity: Intensity::Ct { lo: -1e4, hi: 1e4, scale: 1.0 },
        ..Default::default()
    };
    let (x, rec) = p.image(&volume(data, [1.0, 1.0, 4.0])).unwrap();
    assert_eq!(rec.resampled_shape, [8, 3, 3]);
    let column: Vec<f32> = x.index_axis(Axis(2), 0).index_axis(Axis(1), 0).to_vec();
    assert_eq!(column, [0.0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30.0]);
    // Labels go the same way with nearest neighbour, and predictions come back to the original shape.
    let labels = Array3::from_shape_fn([4, 3, 3], |(z, _, _)| if z >= 2 { 2.0 } else { 0.0 });
    let y = p.labels(&labels, &rec);
    assert_eq!(y.index_axis(Axis(2), 0).index_axis(Axis(1), 0).to_vec(), [0, 0, 0, 0, 1, 1, 1, 1]);
    let back = p.restore(y.clone(), &rec);
    assert_eq!(back, labels.mapv(|v| u8::from(v > 0.0)));
}

#[test]
fn linear_and_nearest_resampling_are_identity_on_the_same_grid() {
    let a = Array3::from_shape_fn([3, 4, 5], |(z, y, x)| (z * 20 + y * 5 + x) as f32);
    assert_eq!(resample_linear(&a, [3, 4, 5]), a);
    let l = a.mapv(|v| v as u8);
    assert_eq!(resample_nearest(&l, [3, 4, 5]), l);
}

#[test]
fn tiles_cover_every_voxel_and_stay_inside() {
    let cfg = WindowConfig { patch: [32, 96, 96], overlap: 0.5, blend: Blend::default() };
    for shape in [[48, 128, 128], [32, 96, 96], [75, 512, 512], [33, 97, 200]] {
        let tiles = cfg.tiles(shape);
        let mut covered = Array3::<u8>::zeros(shape);
        for t in &tiles {
            for a in 0..3 {
                assert!(t[a] + cfg.patch[a] <= shape[a], "tile {t:?} leaves {shape:?}");
            }
            covered.slice_mut(ndarray::s![t[0]..t[0] + 32, t[1]..t[1] + 96, t[2]..t[2] + 96]).fill(1);
        }
        assert!(covered.iter().all(|&c| c == 1), "{shape:?} not covered");
    }
    // Step at most half a tile with overlap 0.5: 48 slices with 32-slice tiles → starts 0, 16.
    assert_eq!(cfg.starts(48, 32), [0, 16]);
    assert_eq!(cfg.starts(128, 96), [0, 32]);
    assert_eq!(cfg.starts(20, 32), [0]);
}

#[test]
fn blending_reproduces_a_prediction_that_tiles_agree_on() {
    // If every tile predicts the input itself, the blended result must be the input, for both blends.
    let shape = [20, 30, 26];
    let input = Array3::from_shape_fn(shape, |(z, y, x)| (z as f32 * 0.1).sin() + (y * x) as f32 * 0.01);
    for blend in [Blend::Constant, Blend::Gaussian { sigma_scale: 0.125 }] {
        let cfg = WindowConfig { patch: [8, 16, 16], overlap: 0.5, blend };
        let mut acc = Accumulator::new(2, shape, &cfg);
        for t in cfg.tiles(shape) {
            let tile = autopath::input::window::extract(&input.view(), t, cfg.patch);
            let pred = ndarray::stack(Axis(0), &[tile.view(), tile.mapv(|v| -v).view()]).unwrap();
            acc.add(t, pred.view());
        }
        let out: Array4<f32> = acc.finish(shape);
        let err = (&out.index_axis(Axis(0), 0) - &input).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(err < 1e-5, "{blend:?}: max error {err}");
        let err = (&out.index_axis(Axis(0), 1) + &input).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(err < 1e-5);
    }
}

#[test]
fn a_coverage_blends_many_predictions_exactly_as_an_accumulator() {
    // Tiles that disagree (each adds its own offset), on a volume the tiles overlap unevenly.
    let shape = [20, 30, 26];
    let cfg = WindowConfig { patch: [8, 16, 16], overlap: 0.5, blend: Blend::Gaussian { sigma_scale: 0.125 } };
    let tiles = cfg.tiles(shape);
    let coverage = Coverage::new(&cfg, shape, &tiles);
    for path in 0..3 {
        let pred = |i: usize| {
            Array4::from_shape_fn((1, 8, 16, 16), |(_, z, y, x)| {
                ((i * 31 + z * 7 + y * 3 + x + path) as f32 * 0.37).sin()
            })
        };
        let mut acc = Accumulator::new(1, shape, &cfg);
        let mut sum = coverage.sum(1);
        for (i, &t) in tiles.iter().enumerate() {
            acc.add(t, pred(i).view());
            coverage.add(&mut sum, t, pred(i).view());
        }
        let cropped = [18, 29, 26];
        assert_eq!(coverage.finish(sum, cropped), acc.finish(cropped), "path {path}");
    }
}

#[test]
fn gaussian_weights_peak_in_the_centre_and_never_vanish() {
    let cfg = WindowConfig { patch: [8, 16, 16], overlap: 0.5, blend: Blend::Gaussian { sigma_scale: 0.125 } };
    let w = autopath::input::window::tile_weights(&cfg);
    let max = w.iter().copied().fold(0.0f32, f32::max);
    assert_eq!(max, 1.0);
    assert!(w[[0, 0, 0]] > 0.0 && w[[0, 0, 0]] < 0.01);
    assert!(w[[4, 8, 8]] > w[[1, 8, 8]]);
}

#[test]
fn small_volumes_are_padded_to_the_patch_with_the_pad_value() {
    let a = Array3::from_elem([10, 20, 30], 1.0f32);
    let p = pad_to_patch(a, [16, 16, 16], -1.0);
    assert_eq!(p.dim(), (16, 20, 30));
    assert_eq!(p[[9, 0, 0]], 1.0);
    assert_eq!(p[[10, 0, 0]], -1.0);
}

#[test]
fn invalid_window_settings_are_errors() {
    let bad = [
        WindowConfig { patch: [0, 16, 16], overlap: 0.5, blend: Blend::Constant },
        WindowConfig { patch: [8, 16, 16], overlap: 1.0, blend: Blend::Constant },
        WindowConfig { patch: [8, 16, 16], overlap: 0.5, blend: Blend::Gaussian { sigma_scale: 0.0 } },
    ];
    for cfg in bad {
        assert!(cfg.validate().is_err(), "{cfg:?}");
    }
}

#[test]
fn tiles_added_a_window_row_at_a_time_blend_as_one_at_a_time() {
    // Two channels, uneven overlaps; tiles handed over in uneven groups that cross window rows.
    let shape = [21, 37, 45];
    let cfg = WindowConfig { patch: [8, 16, 16], overlap: 0.5, blend: Blend::Gaussian { sigma_scale: 0.125 } };
    let tiles = cfg.tiles(shape);
    let preds: Vec<Array4<f32>> = (0..tiles.len())
        .map(|i| {
            Array4::from_shape_fn((2, 8, 16, 16), |(c, z, y, x)| {
                ((i * 17 + c * 5 + z * 7 + y * 3 + x) as f32 * 0.29).sin()
            })
        })
        .collect();
    let mut one = Accumulator::new(2, shape, &cfg);
    for (&t, p) in tiles.iter().zip(&preds) {
        one.add(t, p.view());
    }
    let mut grouped = Accumulator::new(2, shape, &cfg);
    let all: Vec<_> = tiles.iter().zip(&preds).map(|(&t, p)| (t, p.view())).collect();
    for group in all.chunks(5) {
        grouped.add_tiles(group);
    }
    assert_eq!(one.finish(shape), grouped.finish(shape));
}
