//! The segmenter and policy: shapes, parameter counts, dropping semantics, FLOPs, and the masked
//! (per-sample) path against the hard path.

use autopath_models::block::BlockKeep;
use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::layers::Buffers;
use autopath_models::policy::PolicyNet;
use autopath_models::spec::PathCost;
use autopath_models::spec::{ArchSpec, DecoderKind};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};

fn build(spec: &ArchSpec, dtype: DType) -> (VarMap, DeepLab3d) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
    let net = DeepLab3d::load(vb, spec).unwrap();
    (vm, net)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn count(vm: &VarMap) -> u64 {
    vm.all_vars().iter().map(|v| v.elem_count() as u64).sum()
}

#[test]
fn built_networks_have_the_spec_parameter_counts() {
    // Full-width r18 (44.5 M, matching the reference) and small r50 are instantiated for real.
    for (name, width) in [("r18", 64), ("r50", 16), ("r18", 16)] {
        let spec = ArchSpec::preset(name, width, [32, 64, 64]).unwrap();
        let (vm, net) = build(&spec, DType::F32);
        assert_eq!(count(&vm), spec.parameter_count(), "{name} width {width}");
        let mut buffers = Vec::new();
        net.buffers(&mut buffers);
        assert!(buffers.iter().all(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var")));
        assert!(vm.data().lock().unwrap().keys().all(|k| !k.contains("running")), "running stats are not trainable");
    }
}

#[test]
fn output_shapes_for_small_inputs_and_odd_sizes() {
    for name in ["r18", "r50"] {
        let spec = ArchSpec::preset(name, 8, [16, 40, 36]).unwrap();
        let (_, net) = build(&spec, DType::F32);
        for size in [[16, 40, 36], [17, 33, 35]] {
            let x = Tensor::randn(0f32, 1.0, (2, 1, size[0], size[1], size[2]), &Device::Cpu).unwrap();
            let y = net.forward(&x, BlockPath::Full, false).unwrap();
            assert_eq!(y.dims(), &[2, 1, size[0], size[1], size[2]], "{name} {size:?}");
            let s = net.stem(&x, false).unwrap();
            let cost = spec.cost(size);
            assert_eq!(s.dims()[1..], cost.stem_output, "{name} stem {size:?}");
            let mut h = s;
            for (n, b) in net.blocks.iter().enumerate() {
                h = b.forward(&h, BlockKeep::All, false).unwrap();
                assert_eq!(h.dims()[1..], cost.blocks[n].output, "{name} block {n} {size:?}");
            }
        }
    }
}

/// FLOPs of one block counted from the layers themselves: each conv's weight shape times the
/// positions of its actual output.
fn measured_branch_flops(net: &DeepLab3d, n: usize, x: &Tensor) -> (u64, u64, Tensor) {
    let b = &net.blocks[n];
    let conv_flops = |w: &Tensor, y: &Tensor| -> u64 {
        let d = y.dims();
        2 * w.elem_count() as u64 * (d[2] * d[3] * d[4]) as u64
    };
    let mut h = x.clone();
    let mut branch = 0;
    for unit in &b.branch {
        h = unit.conv.forward(&h).unwrap();
        branch += conv_flops(unit.conv.weight(), &h);
        h = unit.bn.forward(&h, false).unwrap().relu().unwrap();
    }
    let shortcut = b.shortcut.as_ref().map_or(0, |s| conv_flops(s.conv.weight(), &s.conv.forward(x).unwrap()));
    (branch, shortcut, b.forward(x, BlockKeep::All, false).unwrap())
}

#[test]
fn dropping_a_block_saves_exactly_its_branch_flops() {
    for name in ["r18", "r50"] {
        let spec = ArchSpec::preset(name, 8, [16, 48, 48]).unwrap();
        let (_, net) = build(&spec, DType::F32);
        let cost = spec.cost([16, 48, 48]);
        let x = Tensor::randn(0f32, 1.0, (1, 1, 16, 48, 48), &Device::Cpu).unwrap();
        let mut h = net.stem(&x, false).unwrap();
        for n in 0..spec.num_blocks() {
            let (branch, shortcut, next) = measured_branch_flops(&net, n, &h);
            assert_eq!(
                (cost.blocks[n].branch_flops, cost.blocks[n].shortcut_flops),
                (branch, shortcut),
                "{name} block {n}"
            );
            let mut keep = vec![true; spec.num_blocks()];
            keep[n] = false;
            assert_eq!(cost.full_flops() - cost.path_flops(&keep), branch);
            h = next;
        }
    }
}

#[test]
fn dropping_a_block_with_a_zero_residual_branch_changes_nothing() {
    let spec = ArchSpec::preset("r18", 8, [16, 32, 32]).unwrap();
    let (vm, net) = build(&spec, DType::F64);
    // Zero the last BN's gamma and beta of every identity-shortcut block: F(x) = 0 there.
    let identity: Vec<usize> =
        net.blocks.iter().enumerate().filter(|(_, b)| b.shortcut.is_none()).map(|(n, _)| n).collect();
    assert_eq!(identity, [0, 1, 3, 5, 7]);
    {
        let data = vm.data().lock().unwrap();
        for &n in &identity {
            let prefix = spec.blocks()[n].name();
            for p in ["weight", "bias"] {
                let v = &data[&format!("{prefix}.bn2.{p}")];
                v.set(&v.zeros_like().unwrap()).unwrap();
            }
        }
    }
    let x = Tensor::randn(0f64, 1.0, (1, 1, 16, 32, 32), &Device::Cpu).unwrap();
    let full = net.forward(&x, BlockPath::Full, false).unwrap();
    for &n in &identity {
        let mut keep = vec![true; 8];
        keep[n] = false;
        let dropped = net.forward(&x, BlockPath::Shared(&keep), false).unwrap();
        assert!(max_abs_diff(&full, &dropped) < 1e-12, "block {n}");
    }
    // A block that computes something does change the output when dropped.
    let mut keep = vec![true; 8];
    keep[2] = false;
    assert!(max_abs_diff(&full, &net.forward(&x, BlockPath::Shared(&keep), false).unwrap()) > 1e-6);
}

#[test]
fn per_sample_masked_path_equals_the_hard_path_of_each_sample() {
    let spec = ArchSpec::preset("r18", 8, [16, 32, 32]).unwrap();
    let (_, net) = build(&spec, DType::F64);
    let x = Tensor::randn(0f64, 1.0, (3, 1, 16, 32, 32), &Device::Cpu).unwrap();
    let masks = vec![
        vec![true, false, true, true, false, true, true, true],
        vec![true, true, true, false, true, true, false, true],
        vec![false, false, true, true, true, true, true, false],
    ];
    let batched = net.forward(&x, BlockPath::PerSample(&masks), false).unwrap();
    for (i, m) in masks.iter().enumerate() {
        let xi = x.narrow(0, i, 1).unwrap();
        let single = net.forward(&xi, BlockPath::Shared(m), false).unwrap();
        assert!(max_abs_diff(&batched.narrow(0, i, 1).unwrap(), &single) < 1e-10, "sample {i}");
    }
}

#[test]
fn policy_outputs_one_probability_per_block_for_any_batch() {
    let spec = ArchSpec::preset("r50", 8, [16, 32, 32]).unwrap();
    let vm = VarMap::new();
    let policy = PolicyNet::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &spec).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 1, 8, 16, 16), &Device::Cpu).unwrap();
    let p = policy.forward(&x, false).unwrap();
    assert_eq!(p.dims(), &[3, 16]);
    let v: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
}

fn skip(name: &str, width: usize, patch: [usize; 3]) -> ArchSpec {
    ArchSpec { decoder: DecoderKind::Skip, ..ArchSpec::preset(name, width, patch).unwrap() }
}

/// The skip decoder's variables are the spec's count, its output has the tile's shape for odd sizes
/// (the ASPP output is resized to the low-level grid, whatever it is), and the low-level features
/// it reads are those after the last block of stage 0 on the path taken.
#[test]
fn the_skip_decoder_has_its_spec_parameters_and_reads_the_stage_0_output() {
    for (name, width) in [("r18", 16), ("r50", 8)] {
        let spec = skip(name, width, [16, 40, 36]);
        let (vm, net) = build(&spec, DType::F32);
        assert_eq!(count(&vm), spec.parameter_count(), "{name} width {width}");
        for size in [[16, 40, 36], [17, 33, 35]] {
            let x = Tensor::randn(0f32, 1.0, (2, 1, size[0], size[1], size[2]), &Device::Cpu).unwrap();
            let y = net.forward(&x, BlockPath::Full, false).unwrap();
            assert_eq!(y.dims(), &[2, 1, size[0], size[1], size[2]], "{name} {size:?}");
        }
    }
    let spec = skip("r18", 8, [16, 32, 32]);
    let (_, net) = build(&spec, DType::F64);
    assert_eq!(spec.low_level_block(), Some(1), "r18's stage 0 is blocks 0 and 1");
    let x = Tensor::randn(0f64, 1.0, (1, 1, 16, 32, 32), &Device::Cpu).unwrap();
    let keep = [true, false, true, true, false, true, true, true];
    let s = net.stem(&x, false).unwrap();
    let low = net.blocks(&s, BlockPath::Shared(&keep), 0, 2, false).unwrap();
    let f = net.blocks(&low, BlockPath::Shared(&keep), 2, 8, false).unwrap();
    let by_hand = net.head(&f, Some(&low), [16, 32, 32], false).unwrap();
    let forward = net.forward(&x, BlockPath::Shared(&keep), false).unwrap();
    assert!(max_abs_diff(&by_hand, &forward) < 1e-12);
    assert!(net.head(&f, None, [16, 32, 32], false).is_err(), "the skip head refuses to run without its input");
}

/// The skip decoder's extra cost in the spec equals its convolutions' FLOPs counted from the layers
/// (weight size × output positions), less the paper decoder's counted the same way.
#[test]
fn the_skip_decoders_flops_are_counted_from_its_layers() {
    use autopath_models::deeplab::DecoderNet;
    let tile = [16, 48, 48];
    let (paper, skipped) = (ArchSpec::preset("r18", 8, tile).unwrap(), skip("r18", 8, tile));
    let ((_, pn), (_, sn)) = (build(&paper, DType::F32), build(&skipped, DType::F32));
    let low = paper.cost(tile).stem_output;
    let low_vox = (low[1] * low[2] * low[3]) as u64;
    let conv = |w: &Tensor, vox: u64| 2 * w.elem_count() as u64 * vox;
    let skip_flops = match &sn.decoder {
        DecoderNet::Skip(d) => [&d.reduce.conv, &d.conv1.conv, &d.conv2.conv, &d.classifier]
            .iter()
            .map(|c| conv(c.weight(), low_vox))
            .sum::<u64>(),
        DecoderNet::Paper(_) => unreachable!(),
    };
    let last = paper.cost(tile).blocks.last().unwrap().output;
    let up_vox = (8 * last[1] * last[2] * last[3]) as u64;
    let paper_flops = match &pn.decoder {
        // ConvTranspose k2 s2: each output voxel takes one of the 8 taps per weight pair.
        DecoderNet::Paper(d) => {
            conv(d.up.weight(), up_vox) / 8 + conv(d.conv.conv.weight(), up_vox) + conv(d.classifier.weight(), up_vox)
        }
        DecoderNet::Skip(_) => unreachable!(),
    };
    let (cp, cs) = (paper.cost(tile), skipped.cost(tile));
    assert_eq!(cs.head_flops - cp.head_flops, skip_flops - paper_flops);
    assert_eq!(cs.blocks, cp.blocks, "the backbone is the same");
}
