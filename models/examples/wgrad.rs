use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{Device, Tensor, Var};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    for (ci, co, hw) in [(80, 16, 24), (16, 16, 24), (32, 32, 12), (64, 64, 6)] {
        let x = Tensor::randn(0f32, 1.0, (2, ci, 8, hw, hw), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (co, ci, 3, 3, 3), &dev).unwrap()).unwrap();
        let p = Conv3dParams { padding: [1; 3], ..Default::default() };
        let y = conv3d(&x, w.as_tensor(), p).unwrap();
        let r = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let mut best = f64::MAX;
        for _ in 0..15 {
            let y = conv3d(&x, w.as_tensor(), p).unwrap();
            let l = (y * &r).unwrap().sum_all().unwrap();
            let t = Instant::now();
            let _g = l.backward().unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("wgrad {ci}->{co} {hw}: {best:.2} ms");
    }
}
