//! Whole-path graphs joined at run time: a path without a graph in the bundle gets one made from the
//! bundle's own segment graphs (stem, each kept block, each dropped block's projection shortcut, head),
//! wired as the chain wires them, and runs as one session. On the CPU provider every graph boundary of
//! the chain converts its value out of and back into ONNX Runtime's blocked layout; one graph has no
//! boundaries. The graphs are the verified ones, unchanged: only their names are prefixed and their
//! inputs bound.

use autopath_bundle::{names, Bundle};
use autopath_onnx::pb::{dimension, ValueInfoProto};
use autopath_onnx::Part;

use crate::error::{Error, Result};

/// `[batch, channels, tile]`, as `full.onnx` declares its input and output.
fn value_info(name: &str, channels: usize, tile: [usize; 3]) -> ValueInfoProto {
    let fixed = [channels, tile[0], tile[1], tile[2]].map(|d| dimension::Value::DimValue(d as i64));
    autopath_onnx::float_tensor(name, std::iter::once(dimension::Value::DimParam(names::BATCH.into())).chain(fixed))
}

/// The serialised graph of path `keep` (`image` → `probabilities`, like `full.onnx`), joined from the
/// bundle's graph files.
pub fn path_graph(bundle: &Bundle, keep: &[bool]) -> Result<Vec<u8>> {
    let a = &bundle.manifest.architecture;
    if keep.len() != a.blocks.len() {
        return Err(Error::invalid("path", format!("{} entries for {} blocks", keep.len(), a.blocks.len())));
    }
    let read = |file: &str| std::fs::read(bundle.path(file)).map_err(|e| Error::io(bundle.path(file), e));
    let mut files = vec![(a.stem_file.clone(), "stem".to_string(), names::IMAGE, names::FEATURES)];
    for (n, (b, &k)) in a.blocks.iter().zip(keep).enumerate() {
        match (k, &b.shortcut_file) {
            (true, _) => files.push((b.file.clone(), format!("block_{n:02}"), names::X, names::Y)),
            (false, Some(f)) => files.push((f.clone(), format!("shortcut_{n:02}"), names::X, names::Y)),
            (false, None) => {}
        }
    }
    let bytes: Vec<Vec<u8>> = files.iter().map(|(f, ..)| read(f)).collect::<Result<_>>()?;
    let head = read(&a.head_file)?;
    let mut parts = Vec::new();
    let mut current = names::IMAGE.to_string();
    let mut low = None;
    let mut at = 0;
    for (n, &k) in std::iter::once(&true).chain(keep).enumerate() {
        // n = 0 is the stem; n = i + 1 is block i.
        let runs = n == 0 || k || a.blocks[n - 1].shortcut_file.is_some();
        if runs {
            let (_, label, input, output) = &files[at];
            let out = format!("{label}/out");
            parts.push(Part {
                bytes: &bytes[at],
                label: label.clone(),
                inputs: vec![(input.to_string(), current.clone())],
                output: (output.to_string(), out.clone()),
            });
            current = out;
            at += 1;
        }
        if n > 0 && a.low_level.as_ref().is_some_and(|l| l.after_block == n - 1) {
            low = Some(current.clone());
        }
    }
    let mut head_inputs = vec![(names::X.to_string(), current)];
    if let (Some(l), Some(v)) = (&a.low_level, low) {
        head_inputs.push((l.input.clone(), v));
    }
    parts.push(Part {
        bytes: &head,
        label: "head".into(),
        inputs: head_inputs,
        output: (names::PROBABILITIES.into(), names::PROBABILITIES.into()),
    });
    let tile = bundle.manifest.input.window.patch;
    let channels = bundle.manifest.input.activation.channels();
    let mask = crate::labels::mask_text(keep);
    autopath_onnx::join(
        &format!("path_{mask}"),
        &parts,
        vec![value_info(names::IMAGE, 1, tile)],
        value_info(names::PROBABILITIES, channels, tile),
    )
    .map_err(|e| Error::invalid("path graph", e.to_string()))
}
