//! Reward, advantage and loss against hand computation on a batch of two with different paths.

use autopath_models::reward::{bounded, learned_blocks, reinforce_loss, reward};
use candle_core::{Device, Tensor, Var};

#[test]
fn reward_matches_the_formula() {
    // acc 0.99, 3 of 4 blocks kept: 0.99·(1 − 0.5625) − 50·0.01 = 0.433125 − 0.5.
    assert!((reward(0.99, 3, 4, 50.0) - (0.433125 - 0.5)).abs() < 1e-12);
    // All correct, nothing kept: 1.
    assert_eq!(reward(1.0, 0, 8, 50.0), 1.0);
    // All kept earns nothing for correct voxels.
    assert_eq!(reward(1.0, 8, 8, 50.0), 0.0);
}

#[test]
fn curriculum_unlocks_one_more_block_every_e_c_epochs() {
    assert_eq!(learned_blocks(4, 0, 10), [false, false, false, true]);
    assert_eq!(learned_blocks(4, 9, 10), [false, false, false, true]);
    assert_eq!(learned_blocks(4, 10, 10), [false, false, true, true]);
    assert_eq!(learned_blocks(4, 95, 10), [true, true, true, true]);
}

#[test]
fn loss_and_gradient_equal_hand_computed_values() {
    let dev = Device::Cpu;
    // Batch of 2, N = 3. Policy probabilities p, α = 0.8 → p' = 0.8p + 0.2(1 − p) = 0.6p + 0.2.
    let p = Var::from_vec(vec![0.5f64, 0.9, 0.1, 0.25, 0.75, 1.0], (2, 3), &dev).unwrap();
    let pb = bounded(p.as_tensor(), 0.8).unwrap();
    let pbv: Vec<f64> = pb.flatten_all().unwrap().to_vec1().unwrap();
    let want_pb = [0.5, 0.74, 0.26, 0.35, 0.65, 0.8];
    for (a, b) in pbv.iter().zip(want_pb) {
        assert!((a - b).abs() < 1e-12);
    }
    // Sampled paths differ per sample; greedy paths from p ≥ 0.5.
    let actions = Tensor::new(&[[1f64, 0., 1.], [0., 1., 1.]], &dev).unwrap();
    // Accuracies of sampled and greedy paths (from a segmenter), τ = 50.
    let (acc_s, acc_g) = ([0.98, 0.995], [0.99, 0.99]);
    let r_s = [reward(acc_s[0], 2, 3, 50.0), reward(acc_s[1], 2, 3, 50.0)];
    let r_g = [reward(acc_g[0], 2, 3, 50.0), reward(acc_g[1], 2, 3, 50.0)]; // greedy: [1,1,0] and [0,1,1]
    let adv = [r_s[0] - r_g[0], r_s[1] - r_g[1]];
    assert!((adv[0] - (-0.5 - 0.01 * 5.0 / 9.0)).abs() < 1e-12, "{adv:?}");
    let advantage = Tensor::new(&adv, &dev).unwrap();
    // Only the last two blocks are learned.
    let learned = Tensor::new(&[0f64, 1., 1.], &dev).unwrap();
    let beta = 0.1;
    let loss = reinforce_loss(&pb, &actions, &advantage, &learned, beta).unwrap();

    // By hand.
    let a = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]];
    let mut total = 0.0;
    for b in 0..2 {
        for n in 1..3 {
            let q = want_pb[b * 3 + n];
            let log_pi = if a[b][n] == 1.0 { f64::ln(q) } else { f64::ln(1.0 - q) };
            let h = -(q * q.ln() + (1.0 - q) * (1.0 - q).ln());
            total += -adv[b] * log_pi - beta * h;
        }
    }
    let got = loss.to_scalar::<f64>().unwrap();
    assert!((got - total / 2.0).abs() < 1e-12, "{got} vs {}", total / 2.0);

    // Gradient w.r.t. p for sample 0, block 2 (kept, learned): d/dp of (−A log p' − β H(p'))/2 with
    // dp'/dp = 0.6 and dH/dp' = log((1 − p')/p').
    let g = loss.backward().unwrap();
    let gp: Vec<f64> = g.get(p.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let q = 0.26;
    let want = 0.6 * (-adv[0] / q - beta * ((1.0 - q) / q).ln()) / 2.0;
    assert!((gp[2] - want).abs() < 1e-9, "{} vs {want}", gp[2]);
    // Forced block: no gradient.
    assert_eq!(gp[0], 0.0);
    assert_eq!(gp[3], 0.0);
}
