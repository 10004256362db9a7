//! Labels from probabilities: one rule for Candle and ONNX Runtime outputs, ties to the first class
//! (NumPy's and PyTorch's argmax), and the manifest's threshold for sigmoid outputs.

use autopath::input::bundle::Activation;
use autopath::labels::{accuracy_and_dice, from_probabilities, mask_text};
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
