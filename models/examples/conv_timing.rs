use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{Device, Tensor, Var};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 32, 16, 32, 32), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (32, 32, 3, 3, 3), &dev).unwrap()).unwrap();
    let p = Conv3dParams { padding: [1; 3], ..Default::default() };
    for _ in 0..3 {
        let t = Instant::now();
        let y = conv3d(x.as_tensor(), w.as_tensor(), p).unwrap();
        let t1 = t.elapsed();
        let g = y.sum_all().unwrap().backward().unwrap();
        let t2 = t.elapsed();
        let _ = g.get(w.as_tensor()).unwrap();
        println!("fwd {:?} bwd {:?}", t1, t2 - t1);
    }
}
