//! A small graph builder: one method per op family, each producing a named node and returning the
//! name of its output. Node names follow the model's weight names (`stage2.block1.conv2`), so an
//! error or a profile line leads back to the layer.

use crate::pb::{
    attribute_type, data_type, dimension, AttributeProto, Dimension, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};

/// A dimension of a graph input or output: fixed or symbolic.
#[derive(Debug, Clone)]
pub enum Dim {
    /// A known size.
    Fixed(usize),
    /// A named symbolic size (`batch`, `depth`…).
    Symbolic(&'static str),
}

/// Convolution settings as ONNX attributes.
#[derive(Debug, Clone, Copy)]
pub struct ConvAttrs {
    /// Kernel size.
    pub kernel: [usize; 3],
    /// Strides.
    pub stride: [usize; 3],
    /// Symmetric padding.
    pub padding: [usize; 3],
    /// Dilations.
    pub dilation: [usize; 3],
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.iter().map(|&x| x as i64).collect(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, r#type: attribute_type::INT, ..Default::default() }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), s: v.as_bytes().to_vec(), r#type: attribute_type::STRING, ..Default::default() }
}

/// Builds one ONNX graph.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new(name: &str, doc: &str) -> Self {
        GraphBuilder { graph: GraphProto { name: name.into(), doc_string: doc.into(), ..Default::default() } }
    }

    fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                    Dim::Symbolic(s) => dimension::Value::DimParam((*s).to_string()),
                }),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type: data_type::FLOAT,
                    shape: Some(TensorShapeProto { dim }),
                }),
            }),
            doc_string: String::new(),
        }
    }

    /// Declares a float input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(Self::value_info(name, dims));
        name.into()
    }

    /// Declares `value` (an existing tensor) as a float output.
    pub fn output(&mut self, value: &str, dims: &[Dim]) {
        self.graph.output.push(Self::value_info(value, dims));
    }

    /// Adds a float initializer (little-endian raw data).
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data,
            doc_string: String::new(),
        });
        name.into()
    }

    /// Adds an int64 initializer.
    pub fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.into(),
            raw_data,
            doc_string: String::new(),
        });
        name.into()
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = format!("{name}.out");
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// `Conv` with weight and bias initializers `name.weight`, `name.bias`.
    pub fn conv(&mut self, name: &str, x: &str, weight: (&[usize], &[f32]), bias: &[f32], a: ConvAttrs) -> String {
        let w = self.weight(&format!("{name}.weight"), weight.0, weight.1);
        let b = self.weight(&format!("{name}.bias"), &[bias.len()], bias);
        let pads: Vec<usize> = a.padding.iter().chain(a.padding.iter()).copied().collect();
        self.node(
            "Conv",
            name,
            &[x, &w, &b],
            vec![
                ints("kernel_shape", &a.kernel),
                ints("strides", &a.stride),
                ints("pads", &pads),
                ints("dilations", &a.dilation),
            ],
        )
    }

    /// `ConvTranspose` with kernel = stride = 2 and a bias.
    pub fn conv_transpose2(&mut self, name: &str, x: &str, weight: (&[usize], &[f32]), bias: &[f32]) -> String {
        let w = self.weight(&format!("{name}.weight"), weight.0, weight.1);
        let b = self.weight(&format!("{name}.bias"), &[bias.len()], bias);
        self.node(
            "ConvTranspose",
            name,
            &[x, &w, &b],
            vec![ints("kernel_shape", &[2, 2, 2]), ints("strides", &[2, 2, 2])],
        )
    }

    /// `Relu`.
    pub fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], vec![])
    }

    /// `Add`.
    pub fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node("Add", name, &[a, b], vec![])
    }

    /// `MaxPool`.
    pub fn max_pool(
        &mut self,
        name: &str,
        x: &str,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> String {
        let pads: Vec<usize> = padding.iter().chain(padding.iter()).copied().collect();
        self.node(
            "MaxPool",
            name,
            &[x],
            vec![ints("kernel_shape", &kernel), ints("strides", &stride), ints("pads", &pads)],
        )
    }

    /// `GlobalAveragePool`.
    pub fn global_avg_pool(&mut self, name: &str, x: &str) -> String {
        self.node("GlobalAveragePool", name, &[x], vec![])
    }

    /// `Concat` along channels.
    pub fn concat_channels(&mut self, name: &str, xs: &[&str]) -> String {
        self.node("Concat", name, xs, vec![int("axis", 1)])
    }

    /// `Expand` of `x` to the shape of `like` (broadcast of the image-pooling branch).
    pub fn expand_like(&mut self, name: &str, x: &str, like: &str) -> String {
        let shape = self.node("Shape", &format!("{name}.shape"), &[like], vec![]);
        self.node("Expand", name, &[x, &shape], vec![])
    }

    /// Trilinear `Resize` (align_corners) of `[N, C, …]` to a fixed spatial `size`, keeping N and C
    /// symbolic: sizes = Concat(Shape(x)[0:2], size).
    pub fn resize_trilinear(&mut self, name: &str, x: &str, size: [usize; 3]) -> String {
        self.resize_keeping_nc(name, x, |g| g.int64s(&format!("{name}.spatial"), &size.map(|v| v as i64)))
    }

    /// Trilinear `Resize` (align corners, as [`Self::resize_trilinear`]) of `x` to the spatial size of
    /// `like`, read from its shape at run time.
    pub fn resize_trilinear_like(&mut self, name: &str, x: &str, like: &str) -> String {
        self.resize_keeping_nc(name, x, |g| {
            let like_shape = g.node("Shape", &format!("{name}.like_shape"), &[like], vec![]);
            let (st, en) = (g.int64s(&format!("{name}.sp_start"), &[2]), g.int64s(&format!("{name}.sp_end"), &[5]));
            g.node("Slice", &format!("{name}.spatial"), &[&like_shape, &st, &en], vec![])
        })
    }

    /// `Resize` of `x` to its own N and C and the spatial size `spatial` builds.
    fn resize_keeping_nc(&mut self, name: &str, x: &str, spatial: impl FnOnce(&mut Self) -> String) -> String {
        let shape = self.node("Shape", &format!("{name}.shape"), &[x], vec![]);
        let (st, en) = (self.int64s(&format!("{name}.nc_start"), &[0]), self.int64s(&format!("{name}.nc_end"), &[2]));
        let nc = self.node("Slice", &format!("{name}.nc"), &[&shape, &st, &en], vec![]);
        let spatial = spatial(self);
        let sizes = self.node("Concat", &format!("{name}.sizes"), &[&nc, &spatial], vec![int("axis", 0)]);
        self.node(
            "Resize",
            name,
            &[x, "", "", &sizes],
            vec![string("mode", "linear"), string("coordinate_transformation_mode", "align_corners")],
        )
    }

    /// `Flatten` to `[N, C]`.
    pub fn flatten(&mut self, name: &str, x: &str) -> String {
        self.node("Flatten", name, &[x], vec![int("axis", 1)])
    }

    /// `Gemm` `x · Wᵀ + b` with W `[out, in]` as a linear layer stores it.
    pub fn linear(&mut self, name: &str, x: &str, weight: (&[usize], &[f32]), bias: &[f32]) -> String {
        let w = self.weight(&format!("{name}.weight"), weight.0, weight.1);
        let b = self.weight(&format!("{name}.bias"), &[bias.len()], bias);
        self.node("Gemm", name, &[x, &w, &b], vec![int("transB", 1)])
    }

    /// `Sigmoid`.
    pub fn sigmoid(&mut self, name: &str, x: &str) -> String {
        self.node("Sigmoid", name, &[x], vec![])
    }

    /// `Softmax` over channels.
    pub fn softmax_channels(&mut self, name: &str, x: &str) -> String {
        self.node("Softmax", name, &[x], vec![int("axis", 1)])
    }

    /// `Identity` (renames a value, e.g. to give a graph output a stable name).
    pub fn identity(&mut self, name: &str, x: &str) -> String {
        self.graph.node.push(NodeProto {
            input: vec![x.into()],
            output: vec![name.into()],
            name: format!("{name}.identity"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        name.into()
    }

    /// The finished graph.
    pub fn finish(self) -> GraphProto {
        self.graph
    }
}
