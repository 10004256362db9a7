//! Architecture presets against the reference implementation's sizes.

use autopath_models::spec::ArchSpec;
use autopath_models::spec::PathCost;

#[test]
fn parameter_counts_match_the_reference() {
    // Reference (PyTorch, Med3D backbone + DeepLab V3 head): R18 44.5 M, R50 90.1 M.
    let r18 = ArchSpec::preset("r18", 64, [48, 256, 256]).unwrap();
    let r50 = ArchSpec::preset("r50", 64, [48, 256, 256]).unwrap();
    let (p18, p50) = (r18.parameter_count() as f64, r50.parameter_count() as f64);
    println!("r18 {p18} r50 {p50}");
    assert!((p18 / 44.5e6 - 1.0).abs() < 0.01, "r18: {p18}");
    assert!((p50 / 90.1e6 - 1.0).abs() < 0.01, "r50: {p50}");
    assert_eq!((r18.num_blocks(), r50.num_blocks()), (8, 16));
}

#[test]
fn reference_input_shapes_and_flops() {
    let r18 = ArchSpec::preset("r18", 64, [48, 256, 256]).unwrap();
    let cost = r18.cost([48, 256, 256]);
    assert_eq!(cost.stem_output, [64, 12, 64, 64]);
    let outs: Vec<[usize; 4]> = cost.blocks.iter().map(|b| b.output).collect();
    assert_eq!(
        outs,
        [
            [64, 12, 64, 64],
            [64, 12, 64, 64],
            [128, 12, 32, 32],
            [128, 12, 32, 32],
            [256, 12, 16, 16],
            [256, 12, 16, 16],
            [512, 12, 8, 8],
            [512, 12, 8, 8]
        ]
    );
    let blocks: u64 = cost.blocks.iter().map(|b| b.branch_flops + b.shortcut_flops).sum();
    let full = cost.full_flops() as f64;
    println!("r18 full {:.1} GFLOP, blocks {:.1} %", full / 1e9, 100.0 * blocks as f64 / full);
    // Peers measured 193 GFLOP with residual blocks 82 % for this network and input.
    assert!((full / 193e9 - 1.0).abs() < 0.05, "{full}");
}
