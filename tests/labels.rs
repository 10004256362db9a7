//! Labels from probabilities: one rule for Candle and ONNX Runtime outputs, ties to the first class
//! (NumPy's and PyTorch's argmax), and the manifest's threshold for sigmoid outputs.

use autopath::labels::{accuracy_and_dice, from_probabilities, mask_text};
use autopath_bundle::Activation;
use ndarray::{Array3, Array4};

#[test]
fn softmax_ties_go_to_the_first_class_and_sigmoid_uses_the_threshold() {
    // Voxels: a three-way tie, a tie of classes 1 and 2, a clear class 2.
    let p = Array4::from_shape_vec((3, 1, 1, 3), vec![0.3f32, 0.2, 0.1, 0.3, 0.4, 0.1, 0.3, 0.4, 0.8]).unwrap();
    let l = from_probabilities(&p, Activation::Softmax { classes: 3 }, 0.5);
    assert_eq!(l.iter().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let s = Array4::from_shape_vec((1, 1, 1, 3), vec![0.5f32, 0.4999, 0.9]).unwrap();
    assert_eq!(from_probabilities(&s, Activation::Sigmoid, 0.5).iter().copied().collect::<Vec<_>>(), vec![1, 0, 1]);
    assert_eq!(from_probabilities(&s, Activation::Sigmoid, 0.95).iter().copied().collect::<Vec<_>>(), vec![0, 0, 0]);
}

#[test]
fn accuracy_dice_and_mask_text_follow_their_definitions() {
    let pred = Array3::from_shape_vec((1, 1, 4), vec![1u8, 1, 0, 2]).unwrap();
    let truth = Array3::from_shape_vec((1, 1, 4), vec![1u8, 0, 0, 1]).unwrap();
    let (acc, dice) = accuracy_and_dice(&pred, &truth);
    assert_eq!(acc, 0.5);
    // Foreground = label > 0: P = {0, 1, 3}, G = {0, 3}, |P∩G| = 2 → (4 + ε) / (5 + ε).
    assert!((dice - (4.0 + 1e-5) / (5.0 + 1e-5)).abs() < 1e-12);
    assert_eq!(mask_text(&[true, false, true, true]), "1011");
}

#[test]
fn accuracy_and_dice_of_large_and_transposed_volumes_match_the_voxel_by_voxel_definition() {
    // Over a million voxels (more than one counting chunk), labels 0–2, and a transposed view.
    let label = |seed: u64| {
        Array3::from_shape_fn((20, 230, 240), move |(z, y, x)| {
            let mut h = ((z * 230 + y) * 240 + x) as u64 ^ (seed << 40);
            h = (h ^ (h >> 33)).wrapping_mul(0xff51afd7ed558ccd);
            h = (h ^ (h >> 33)).wrapping_mul(0xc4ceb9fe1a85ec53);
            ((h ^ (h >> 33)) % 3) as u8
        })
    };
    let (pred, truth) = (label(1), label(5).reversed_axes());
    let truth = truth.as_standard_layout().into_owned().reversed_axes();
    assert!(!truth.is_standard_layout());
    let same = pred.iter().zip(truth.iter()).filter(|(a, b)| a == b).count() as f64 / pred.len() as f64;
    let want_dice = autopath::labels::dice(pred.iter().map(|&v| v > 0), truth.iter().map(|&v| v > 0));
    let (acc, dice) = accuracy_and_dice(&pred, &truth);
    assert_eq!(acc, same);
    assert_eq!(dice, want_dice);
    assert!(acc > 0.2 && acc < 0.5 && dice > 0.5 && dice < 0.8, "a mix of agreements: {acc} {dice}");
}
