//! Times conv3d's forward, weight gradient and input gradient apart on the demo network's shapes
//! (r18 width 16, batch 2 of 32×96×96): min and median of 15 each. Used to find and check the
//! convolutions that dominate a training step (`autopath step-time`).
use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

fn stats(mut ts: Vec<f64>) -> (f64, f64) {
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ts[0], ts[ts.len() / 2])
}

fn main() {
    let dev = Device::Cpu;
    let stem = Conv3dParams { stride: [2; 3], padding: [3; 3], ..Default::default() };
    let block = Conv3dParams { padding: [1; 3], ..Default::default() };
    let down = Conv3dParams { stride: [1, 2, 2], padding: [1; 3], ..Default::default() };
    let blocks = [(16, 16, 8, 24), (32, 32, 8, 12), (64, 64, 8, 6), (128, 128, 8, 3), (76, 16, 8, 24)];
    let transitions = [(16, 32, 8, 24), (32, 64, 8, 12), (64, 128, 8, 6)];
    let cases = [(1, 16, 32, 96, 7, stem)]
        .into_iter()
        .chain(blocks.map(|(ci, co, d, hw)| (ci, co, d, hw, 3, block)))
        .chain(transitions.map(|(ci, co, d, hw)| (ci, co, d, hw, 3, down)));
    // An optional argument keeps only the shapes whose input channel count it names (for `perf`).
    let only: Option<usize> = std::env::args().nth(1).map(|a| a.parse().expect("a channel count"));
    for (ci, co, d, hw, k, p) in cases.filter(|c| only.is_none_or(|o| o == c.0)) {
        let x = Tensor::randn(0f32, 1.0, (2, ci, d, hw, hw), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.05, (co, ci, k, k, k), &dev).unwrap();
        let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let (mut f, mut gw, mut gx) = (vec![], vec![], vec![]);
        for _ in 0..if only.is_some() { 200 } else { 15 } {
            let t = Instant::now();
            let y = conv3d(&x, &w, p).unwrap();
            f.push(t.elapsed().as_secs_f64() * 1e3);
            drop(y);
            let y = conv3d(&x, wv.as_tensor(), p).unwrap();
            let t = Instant::now();
            let _g = y.backward().unwrap();
            gw.push(t.elapsed().as_secs_f64() * 1e3);
            if ci > 1 {
                let y = conv3d(xv.as_tensor(), &w, p).unwrap();
                let t = Instant::now();
                let _g = y.backward().unwrap();
                gx.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (f, gw) = (stats(f), stats(gw));
        let gx = if gx.is_empty() { (0.0, 0.0) } else { stats(gx) };
        println!(
            "{ci:>3}->{co:<3} {d}x{hw}x{hw} k{k} s{:?}: forward {:.2}/{:.2}  weight grad {:.2}/{:.2}  input grad {:.2}/{:.2} ms (min/median)",
            p.stride[2],
            f.0,
            f.1,
            gw.0,
            gw.1,
            gx.0,
            gx.1
        );
    }
}
