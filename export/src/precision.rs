//! fp16 graphs from fp32 ones: every float weight rounded to fp16 (BatchNorm is already folded into
//! the convolutions, so the folded weights are what is rounded), every float input cast to fp16 where
//! it enters and every float output cast back to f32 where it leaves. Between the casts each operator
//! runs on fp16 tensors; the graph's interface is unchanged, so an fp16 block chains with the runtime's
//! f32 buffers and with any other graph of the bundle.

use crate::pb::{attribute_type, data_type, AttributeProto, GraphProto, ModelProto, NodeProto};
use crate::{Error, GraphFile, Result};
use autopath_bundle::Precision;
use prost::Message;

/// Graphs of `precision`: fp32 as they are; fp16 as the module says, except the policy's graph, which
/// stays f32 so that a bundle's paths do not depend on its precision.
pub fn with_precision(files: &mut [GraphFile], precision: Precision) -> Result<()> {
    if precision == Precision::Fp32 {
        return Ok(());
    }
    for f in files.iter_mut().filter(|f| f.role != "policy") {
        let mut model = ModelProto::decode(f.bytes.as_slice())
            .map_err(|e| Error::Tensor { name: f.file.clone(), reason: format!("re-reading the graph: {e}") })?;
        if let Some(g) = model.graph.as_mut() {
            to_half(g);
        }
        f.bytes = model.encode_to_vec();
    }
    Ok(())
}

fn cast(input: &str, output: &str, to: i32) -> NodeProto {
    NodeProto {
        input: vec![input.into()],
        output: vec![output.into()],
        name: format!("{output}.cast"),
        op_type: "Cast".into(),
        attribute: vec![AttributeProto {
            name: "to".into(),
            i: to as i64,
            r#type: attribute_type::INT,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn rename_uses(nodes: &mut [NodeProto], from: &str, to: &str) {
    for name in nodes.iter_mut().flat_map(|n| n.input.iter_mut()).filter(|i| *i == from) {
        *name = to.into();
    }
}

fn is_float(v: &crate::pb::ValueInfoProto) -> bool {
    v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).is_some_and(|t| t.elem_type == data_type::FLOAT)
}

/// Rewrites one graph to fp16 inside, f32 at its edges.
fn to_half(g: &mut GraphProto) {
    for t in g.initializer.iter_mut().filter(|t| t.data_type == data_type::FLOAT) {
        t.raw_data = t
            .raw_data
            .chunks_exact(4)
            .flat_map(|b| half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        t.data_type = data_type::FLOAT16;
    }
    let mut entry = Vec::new();
    for input in g.input.iter().filter(|v| is_float(v)) {
        let half = format!("{}.fp16", input.name);
        rename_uses(&mut g.node, &input.name, &half);
        entry.push(cast(&input.name, &half, data_type::FLOAT16));
    }
    for output in g.output.iter().filter(|v| is_float(v)) {
        let half = format!("{}.fp16", output.name);
        rename_uses(&mut g.node, &output.name, &half);
        for produced in g.node.iter_mut().flat_map(|n| n.output.iter_mut()).filter(|o| **o == output.name) {
            *produced = half.clone();
        }
        g.node.push(cast(&half, &output.name, data_type::FLOAT));
    }
    g.node.splice(0..0, entry);
    g.value_info.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Dim, GraphBuilder};

    /// The rewritten graph keeps f32 at its edges, holds fp16 weights, and every value is produced
    /// before it is used (inputs through their casts).
    #[test]
    fn fp16_graphs_keep_their_interface_and_order() {
        let mut g = GraphBuilder::new("t", "test");
        let x = g.input("x", &[Dim::Symbolic("batch"), Dim::Fixed(2)]);
        let w = g.weight("w", &[2, 2], &[1.0, 0.5, 65504.0, 1e-8]);
        let y = g.matmul("mm", &x, &w);
        let y = g.relu("act", &y);
        let y = g.identity("y", &y);
        g.output(&y, &[Dim::Symbolic("batch"), Dim::Fixed(2)]);
        let mut graph = g.finish();
        to_half(&mut graph);
        assert!(graph.input.iter().chain(&graph.output).all(is_float));
        let w = &graph.initializer[0];
        assert_eq!(w.data_type, data_type::FLOAT16);
        let halves: Vec<f32> =
            w.raw_data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert_eq!(halves[..3], [1.0, 0.5, 65504.0]);
        let mut known: Vec<String> = vec!["x".into(), "w".into()];
        for n in &graph.node {
            assert!(n.input.iter().all(|i| known.contains(i)), "{} reads a value not yet made", n.name);
            known.extend(n.output.iter().cloned());
        }
        assert_eq!(graph.node.first().map(|n| n.op_type.as_str()), Some("Cast"));
        assert_eq!(graph.node.last().map(|n| n.output[0].as_str()), Some("y"));
    }
}
