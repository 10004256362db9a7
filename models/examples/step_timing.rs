//! Times the forward pass of r18 width 16 (skip decoder) on [2, 1, 32, 96, 96] part by part, then the
//! loss and the backward pass: where a training step's time goes, for profiling against PyTorch.
use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::init::SeededVarMap;
use autopath_models::loss::segmentation_loss;
use autopath_models::spec::{ArchSpec, DecoderKind};
use candle_core::{DType, Device, Module, Tensor};
use std::time::Instant;

fn main() {
    let mut spec = ArchSpec::preset("r18", 16, [32, 96, 96]).unwrap();
    spec.decoder = DecoderKind::Skip;
    let vars = SeededVarMap::new(0);
    let net = DeepLab3d::load(vars.var_builder(DType::F32, &Device::Cpu), &spec).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 96, 96), &Device::Cpu).unwrap();
    let y = Tensor::zeros((2, 32, 96, 96), DType::F32, &Device::Cpu).unwrap();
    let low_at = spec.low_level_block().unwrap();
    for _ in 0..4 {
        let mut line = String::new();
        let t = Instant::now();
        let mut last = t.elapsed();
        let mut lap = |name: &str, line: &mut String| {
            let now = t.elapsed();
            line.push_str(&format!("{name} {:.1} ", (now - last).as_secs_f64() * 1e3));
            last = now;
        };
        let c = net.stem.conv.forward(&x).unwrap();
        lap("stem-conv", &mut line);
        let c = net.stem.bn.forward_relu(&c, true).unwrap();
        lap("stem-bn", &mut line);
        let mut h = autopath_models::layers::max_pool3d(&c, autopath_models::deeplab::STEM_POOL).unwrap();
        lap("stem-pool", &mut line);
        let mut low = None;
        for b in 0..8 {
            h = net.blocks(&h, BlockPath::Full, b, b + 1, true).unwrap();
            if b == low_at {
                low = Some(h.clone());
            }
            lap(&format!("b{b}"), &mut line);
        }
        let logits = net.head(&h, low.as_ref(), [32, 96, 96], true).unwrap();
        lap("head", &mut line);
        let loss = segmentation_loss(&logits, &y, spec.output).unwrap();
        lap("loss", &mut line);
        let _g = loss.backward().unwrap();
        lap("backward", &mut line);
        println!("{line}total {:.1}", t.elapsed().as_secs_f64() * 1e3);
    }
}
