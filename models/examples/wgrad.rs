//! Times conv3d's weight gradient alone (the input is not a variable, so no input gradient) on the
//! demo network's shapes, its stem (7×7×7, stride 2) and the benches' 32-channel block: min and median
//! of 15.
use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{Device, Tensor, Var};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let stem = Conv3dParams { stride: [2; 3], padding: [3; 3], ..Default::default() };
    let block = Conv3dParams { padding: [1; 3], ..Default::default() };
    let blocks =
        [(32, 32, 16, 32), (80, 16, 8, 24), (16, 16, 8, 24), (32, 32, 8, 12), (64, 64, 8, 6), (128, 128, 8, 3)];
    let cases = [(1, 16, 32, 96, 7, stem)].into_iter().chain(blocks.map(|(ci, co, d, hw)| (ci, co, d, hw, 3, block)));
    for (ci, co, d, hw, k, p) in cases {
        let x = Tensor::randn(0f32, 1.0, (2, ci, d, hw, hw), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (co, ci, k, k, k), &dev).unwrap()).unwrap();
        let mut ts = vec![];
        for _ in 0..15 {
            let y = conv3d(&x, w.as_tensor(), p).unwrap();
            let t = Instant::now();
            let _g = y.backward().unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("wgrad {ci}->{co} {d}x{hw}x{hw} k{k}: min {:.2} med {:.2} ms", ts[0], ts[7]);
    }
}
