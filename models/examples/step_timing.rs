//! Times one training step of r18 width 16 on [2, 1, 32, 96, 96], split into forward, loss and backward.
use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::init::SeededVarMap;
use autopath_models::loss::segmentation_loss;
use autopath_models::spec::ArchSpec;
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn main() {
    let spec = ArchSpec::preset("r18", 16, [32, 96, 96]).unwrap();
    let vars = SeededVarMap::new(0);
    let net = DeepLab3d::load(vars.var_builder(DType::F32, &Device::Cpu), &spec).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 96, 96), &Device::Cpu).unwrap();
    let y = Tensor::zeros((2, 32, 96, 96), DType::F32, &Device::Cpu).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let train = std::env::var("TRAIN").map_or(true, |v| v == "1");
        let s = net.stem(&x, train).unwrap();
        let t_stem = t.elapsed();
        let f = net.blocks(&s, BlockPath::Full, 0, 8, train).unwrap();
        let t_blocks = t.elapsed();
        let logits = net.head(&f, None, [32, 96, 96], train).unwrap();
        let t_head = t.elapsed();
        let loss = segmentation_loss(&logits, &y, spec.output).unwrap();
        let t_loss = t.elapsed();
        let _g = loss.backward().unwrap();
        let t_bwd = t.elapsed();
        println!(
            "stem {:?} blocks {:?} head {:?} loss {:?} backward {:?}",
            t_stem,
            t_blocks - t_stem,
            t_head - t_blocks,
            t_loss - t_head,
            t_bwd - t_loss
        );
    }
}
