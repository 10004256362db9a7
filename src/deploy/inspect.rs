//! `autopath inspect`: what a bundle is, in lines a person reads — architecture, decoder, blocks with
//! their FLOPs, the input contract, the policy, the evaluation it came from, and a GPU memory estimate.

use autopath_bundle::PathCost;
use std::fmt::Write as _;

use autopath_bundle::Bundle;

/// Appends one formatted line.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// The description of a loaded (checksum-verified) bundle, for calls of `tile_batch` tiles.
pub fn describe(b: &Bundle, tile_batch: usize) -> String {
    let mut out = String::new();
    let m = &b.manifest;
    let a = &m.architecture;
    say!(
        out,
        "bundle {} (schema {}, sha256 {}…): all {} files verified",
        b.dir.display(),
        m.schema_version,
        &b.hash[..16],
        m.files.len()
    );
    say!(
        out,
        "producer: autopath {}, ONNX opset {} (IR {}), verified with ONNX Runtime {}; 3D convolutions: {}; stem: {}; \
         precision: {}",
        m.producer.autopath,
        m.producer.onnx_opset,
        m.producer.onnx_ir_version,
        m.producer.onnx_runtime,
        m.producer.conv3d,
        m.producer.stem.name(),
        m.producer.precision.name()
    );
    say!(
        out,
        "network: {} ({} blocks), width {}, {:.2} M parameters, {:.2} GFLOP per tile {:?}",
        a.name,
        a.blocks.len(),
        a.width,
        a.parameters as f64 / 1e6,
        a.full_flops() as f64 / 1e9,
        m.input.window.patch
    );
    architecture_lines(&mut out, a);
    say!(
        out,
        "input: {} {:?}, tile {:?} overlap {} {:?}, {:?} threshold {}",
        m.input.modality,
        m.input.preprocessing.intensity,
        m.input.window.patch,
        m.input.window.overlap,
        m.input.window.blend,
        m.input.activation,
        m.input.threshold
    );
    say!(out, "{}", labels_line(&m.input));
    match &m.policy {
        Some(p) => {
            say!(out, "policy: {} on {:?}, keep if p >= {}", p.file, p.input, p.threshold);
            for g in &p.path_graphs {
                say!(out, "whole-path graph: {} ({} of the calibration volumes took this path)", g.file, g.volumes);
            }
        }
        None => say!(out, "policy: none (the runtime runs the full path)"),
    }
    if let Some(e) = &m.evaluation {
        say!(out, "evaluation: {e}");
    }
    let g = crate::deploy::memory::estimate(b, tile_batch);
    say!(out,
        "GPU memory per worker (estimate, tile batch {tile_batch}): {:.0} MB = weights {:.0} + activations {:.0} + margin {:.0}; \
         + {:.0} MB when full.onnx is used (every block kept, audits, bench); + {:.0} MB as the whole-path graphs are used; \
         + ~{:.0} MB CUDA context per process",
        g.per_worker_mb(),
        g.weights_mb,
        g.activations_mb,
        g.margin_mb,
        g.full_graph_mb,
        g.path_graphs_mb,
        g.cuda_context_mb
    );
    out
}

/// The decoder line and the block table.
fn architecture_lines(out: &mut String, a: &autopath_bundle::Architecture) {
    match &a.low_level {
        Some(l) => say!(
            out,
            "decoder: {} (head input {:?} {:?}: the output after block {}); head {:.3} GFLOP",
            a.decoder,
            l.input,
            l.shape,
            l.after_block,
            a.head_flops as f64 / 1e9
        ),
        None => say!(out, "decoder: {}; head {:.3} GFLOP", a.decoder, a.head_flops as f64 / 1e9),
    }
    say!(
        out,
        "  {:<5} {:<14} {:>16} {:>16} {:>12} {:>10}",
        "block",
        "name",
        "input",
        "output",
        "branch GF",
        "shortcut"
    );
    for bl in &a.blocks {
        say!(
            out,
            "  {:<5} {:<14} {:>16} {:>16} {:>12.3} {:>10}",
            bl.index,
            bl.name,
            format!("{:?}", bl.input),
            format!("{:?}", bl.output),
            bl.branch_flops as f64 / 1e9,
            if bl.shortcut_file.is_some() { "projection" } else { "identity" }
        );
    }
}

/// `labels: 0=background, 1=liver (resampled to …)`: the output's names and the grid the network sees.
fn labels_line(input: &autopath_bundle::InputContract) -> String {
    let spacing = match input.preprocessing.target_spacing {
        Some([d, h, w]) => {
            format!("resampled to {d:.3},{h:.3},{w:.3} mm (D,H,W); probabilities back to the input grid")
        }
        None => "each volume at its own grid".into(),
    };
    let names: Vec<String> = input.labels.iter().enumerate().map(|(i, n)| format!("{i}={n}")).collect();
    format!("labels: {} ({spacing})", names.join(", "))
}
