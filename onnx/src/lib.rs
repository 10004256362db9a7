//! The subset of ONNX's protobuf that AutoPath writes ([`pb`]), and [`join`]: graphs that feed one
//! another joined into one graph, so that a chain of a bundle's segment graphs runs as one session.
#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod pb;

use pb::ValueInfoProto;
use pb::{data_type, dimension, Dimension, GraphProto, ModelProto, TensorShapeProto, TypeProto, TypeProtoTensor};
use prost::Message;
use std::collections::HashMap;

/// Errors while joining graphs, naming the graph at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A graph could not be decoded or does not fit the join.
    #[error("{graph}: {reason}")]
    Graph {
        /// The part's label.
        graph: String,
        /// What is wrong.
        reason: String,
    },
}

/// A float tensor's value info: its name and its dimensions, each fixed or named.
pub fn float_tensor(name: &str, dims: impl IntoIterator<Item = dimension::Value>) -> ValueInfoProto {
    let dim = dims.into_iter().map(|v| Dimension { value: Some(v) }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: data_type::FLOAT, shape: Some(TensorShapeProto { dim }) }),
        }),
        doc_string: String::new(),
    }
}

/// One graph of a join: its serialised model, a label (unique in the join: it prefixes the graph's
/// node, value and weight names), which value of the join feeds each of its inputs, and the name its
/// one output takes in the join.
#[derive(Debug, Clone)]
pub struct Part<'a> {
    /// Serialised `ModelProto`.
    pub bytes: &'a [u8],
    /// Unique label, e.g. `block_03`.
    pub label: String,
    /// Per graph input: (its name in the graph, the join's value bound to it).
    pub inputs: Vec<(String, String)>,
    /// The graph's output: (its name in the graph, its name in the join).
    pub output: (String, String),
}

fn graph_of<'p>(part: &Part, model: &'p ModelProto) -> Result<&'p GraphProto, Error> {
    let bad = |reason: String| Error::Graph { graph: part.label.clone(), reason };
    let g = model.graph.as_ref().ok_or_else(|| bad("the model has no graph".into()))?;
    for input in &g.input {
        if !part.inputs.iter().any(|(name, _)| *name == input.name) {
            return Err(bad(format!("its input {:?} is not bound", input.name)));
        }
    }
    match g.output.as_slice() {
        [o] if o.name == part.output.0 => Ok(g),
        outputs => Err(bad(format!(
            "one output {:?} expected, the graph has {:?}",
            part.output.0,
            outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
        ))),
    }
}

/// The parts, in order, as one model: each part's nodes and weights renamed under its label, its
/// inputs read from the values bound to them, its output written under its join name. `inputs` and
/// `output` declare the join's own graph inputs and output (values that parts read or write). Opset
/// and IR version are the first part's.
pub fn join(name: &str, parts: &[Part], inputs: Vec<ValueInfoProto>, output: ValueInfoProto) -> Result<Vec<u8>, Error> {
    let mut joined = GraphProto {
        name: name.into(),
        doc_string: format!("{name}: joined from {} graphs", parts.len()),
        input: inputs,
        output: vec![output],
        ..Default::default()
    };
    let mut first: Option<ModelProto> = None;
    for part in parts {
        let model = ModelProto::decode(part.bytes)
            .map_err(|e| Error::Graph { graph: part.label.clone(), reason: format!("not an ONNX model: {e}") })?;
        let g = graph_of(part, &model)?;
        let mut names: HashMap<&str, String> = part.inputs.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
        names.insert(part.output.0.as_str(), part.output.1.clone());
        let rename = |n: &String| match names.get(n.as_str()) {
            _ if n.is_empty() => String::new(),
            Some(bound) => bound.clone(),
            None => format!("{}/{n}", part.label),
        };
        for node in &g.node {
            let mut node = node.clone();
            node.name = format!("{}/{}", part.label, node.name);
            node.input = node.input.iter().map(rename).collect();
            node.output = node.output.iter().map(rename).collect();
            joined.node.push(node);
        }
        for t in &g.initializer {
            let mut t = t.clone();
            t.name = rename(&t.name);
            joined.initializer.push(t);
        }
        first.get_or_insert(model);
    }
    let first = first.ok_or_else(|| Error::Graph { graph: name.into(), reason: "nothing to join".into() })?;
    Ok(ModelProto { graph: Some(joined), doc_string: name.into(), ..first }.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::pb::{NodeProto, ValueInfoProto};
    use super::*;

    fn model(input: &str, output: &str) -> Vec<u8> {
        let info = |name: &str| ValueInfoProto { name: name.into(), ..Default::default() };
        let node = NodeProto {
            input: vec![input.into()],
            output: vec![output.into()],
            name: "relu".into(),
            op_type: "Relu".into(),
            ..Default::default()
        };
        let graph =
            GraphProto { node: vec![node], input: vec![info(input)], output: vec![info(output)], ..Default::default() };
        ModelProto { graph: Some(graph), ..Default::default() }.encode_to_vec()
    }

    /// Two graphs in a row: names prefixed, the second reading the first's output; an unbound input
    /// and a wrong output name are refused, naming the part.
    #[test]
    fn graphs_join_in_order_and_misfits_are_named() {
        let (a, b) = (model("x", "y"), model("x", "y"));
        let part = |bytes, label: &str, from: &str, to: &str| Part {
            bytes,
            label: label.into(),
            inputs: vec![("x".into(), from.into())],
            output: ("y".into(), to.into()),
        };
        let info = |name: &str| ValueInfoProto { name: name.into(), ..Default::default() };
        let joined =
            join("j", &[part(&a, "one", "in", "mid"), part(&b, "two", "mid", "out")], vec![info("in")], info("out"))
                .expect("joins");
        let g = ModelProto::decode(joined.as_slice()).expect("decodes").graph.expect("graph");
        let nodes: Vec<(&str, &str, &str)> =
            g.node.iter().map(|n| (n.name.as_str(), n.input[0].as_str(), n.output[0].as_str())).collect();
        assert_eq!(nodes, [("one/relu", "in", "mid"), ("two/relu", "mid", "out")]);
        let unbound = Part { inputs: vec![], ..part(&a, "one", "in", "mid") };
        let e = join("j", &[unbound], vec![], info("mid")).expect_err("unbound input");
        assert!(e.to_string().contains("one: its input \"x\" is not bound"), "{e}");
        let wrong = Part { output: ("z".into(), "mid".into()), ..part(&a, "one", "in", "mid") };
        let e = join("j", &[wrong], vec![info("in")], info("mid")).expect_err("wrong output");
        assert!(e.to_string().contains("one: one output \"z\" expected"), "{e}");
    }
}
