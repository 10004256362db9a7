//! A small graph builder: one method per op family, each producing a named node and returning the
//! name of its output. Node names follow the model's weight names (`stage2.block1.conv2`), so an
//! error or a profile line leads back to the layer.

use crate::pb::{
    attribute_type, data_type, dimension, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto,
};
use autopath_bundle::{Conv3dLayout, StemForm};

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
    layout: Conv3dLayout,
    stem: StemForm,
}

impl GraphBuilder {
    /// An empty graph whose 3D convolutions are written natively.
    pub fn new(name: &str, doc: &str) -> Self {
        GraphBuilder {
            graph: GraphProto { name: name.into(), doc_string: doc.into(), ..Default::default() },
            layout: Conv3dLayout::Native,
            stem: StemForm::Conv,
        }
    }

    /// The same builder writing the stem as `stem` says.
    pub fn with_stem(mut self, stem: StemForm) -> Self {
        self.stem = stem;
        self
    }

    /// How the stem is written.
    pub fn stem_form(&self) -> StemForm {
        self.stem
    }

    /// A native `Conv` with stride 1 and its own padding before and after each spatial axis.
    pub fn conv_padded(
        &mut self,
        name: &str,
        x: &str,
        weight: (&[usize], &[f32]),
        bias: &[f32],
        (before, after): ([usize; 3], [usize; 3]),
    ) -> String {
        let w = self.weight(&format!("{name}.weight"), weight.0, weight.1);
        let b = self.weight(&format!("{name}.bias"), &[bias.len()], bias);
        let pads: Vec<usize> = before.iter().chain(after.iter()).copied().collect();
        self.node(
            "Conv",
            name,
            &[x, &w, &b],
            vec![ints("kernel_shape", &weight.0[2..]), ints("strides", &[1, 1, 1]), ints("pads", &pads)],
        )
    }

    /// The same builder writing 3D convolutions as `layout` says.
    pub fn with_layout(mut self, layout: Conv3dLayout) -> Self {
        self.layout = layout;
        self
    }

    fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
        autopath_onnx::float_tensor(
            name,
            dims.iter().map(|d| match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Symbolic(s) => dimension::Value::DimParam((*s).to_string()),
            }),
        )
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

    /// `Conv` with weight and bias initializers `name.weight`, `name.bias` (as depth taps, see
    /// [`Conv3dLayout::DepthTaps`], where the layout asks for them and the convolution allows them).
    pub fn conv(&mut self, name: &str, x: &str, weight: (&[usize], &[f32]), bias: &[f32], a: ConvAttrs) -> String {
        let (k, p, d) = (a.kernel[0], a.padding[0], a.dilation[0]);
        if self.layout == Conv3dLayout::DepthTaps && k > 1 && a.stride[0] == 1 && 2 * p == d * (k - 1) {
            return self.conv_depth_taps(name, x, weight, bias, a);
        }
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

    /// A same-depth 3D convolution as depth taps: `[N, C, D, H, W]` → `[N·D, C, H, W]` → one 2D `Conv`
    /// with the k taps' kernels stacked (`[k·Co, Ci, kh, kw]`) → `[N, D, k, Co, H', W']` → zero-padded in
    /// depth → tap t read at depth offset t·dilation → summed → back to `[N, Co, D, H', W']` + bias.
    fn conv_depth_taps(
        &mut self,
        name: &str,
        x: &str,
        weight: (&[usize], &[f32]),
        bias: &[f32],
        a: ConvAttrs,
    ) -> String {
        let (dims, w) = weight;
        let (co, ci, k) = (dims[0], dims[1], dims[2]);
        let plane = dims[3] * dims[4];
        // [Co, Ci, k, kh, kw] → [k, Co, Ci, kh, kw]: output channel t·Co + o is tap t of channel o.
        let mut taps = Vec::with_capacity(w.len());
        for t in 0..k {
            for o in 0..co {
                for c in 0..ci {
                    let at = ((o * ci + c) * k + t) * plane;
                    taps.extend_from_slice(&w[at..at + plane]);
                }
            }
        }
        let w2 = self.weight(&format!("{name}.weight_taps"), &[k * co, ci, dims[3], dims[4]], &taps);
        let n = |suffix: &str| format!("{name}.{suffix}");
        let xt = self.node("Transpose", &n("to_slices"), &[x], vec![ints("perm", &[0, 2, 1, 3, 4])]);
        let shape = self.node("Shape", &n("shape"), &[x], vec![]);
        let batch = self.slice1(&n("batch"), &shape, 0, 1);
        let depth = self.slice1(&n("depth"), &shape, 2, 3);
        let hw = self.slice1(&n("hw"), &shape, 3, 5);
        let lead = self.int64s(&n("lead"), &[-1, ci as i64]);
        let s2d = self.node("Concat", &n("slices_shape"), &[&lead, &hw], vec![int("axis", 0)]);
        let x2 = self.node("Reshape", &n("slices"), &[&xt, &s2d], vec![]);
        let y2 = self.node(
            "Conv",
            &n("taps"),
            &[&x2, &w2],
            vec![
                ints("kernel_shape", &a.kernel[1..]),
                ints("strides", &a.stride[1..]),
                ints("pads", &[a.padding[1], a.padding[2], a.padding[1], a.padding[2]]),
                ints("dilations", &a.dilation[1..]),
            ],
        );
        let y_shape = self.node("Shape", &n("taps_shape"), &[&y2], vec![]);
        let hw_out = self.slice1(&n("hw_out"), &y_shape, 2, 4);
        let kc = self.int64s(&n("k_co"), &[k as i64, co as i64]);
        let s6 = self.node("Concat", &n("split_shape"), &[&batch, &depth, &kc, &hw_out], vec![int("axis", 0)]);
        let y6 = self.node("Reshape", &n("split"), &[&y2, &s6], vec![]);
        let p = a.padding[0] as i64;
        let pads = self.int64s(&n("depth_pads"), &[0, p, 0, 0, 0, 0, 0, p, 0, 0, 0, 0]);
        let padded = self.node("Pad", &n("padded"), &[&y6, &pads], vec![]);
        let mut sum: Option<String> = None;
        for t in 0..k {
            // Output depth d reads tap t at padded depth d + t·dilation; the padded depth is D + 2p.
            let start = (t * a.dilation[0]) as i64;
            let end = if start == 2 * p { i64::MAX } else { start - 2 * p };
            let st = self.int64s(&n(&format!("tap{t}_start")), &[start, t as i64]);
            let en = self.int64s(&n(&format!("tap{t}_end")), &[end, t as i64 + 1]);
            let axes = self.int64s(&n(&format!("tap{t}_axes")), &[1, 2]);
            let tap = self.node("Slice", &n(&format!("tap{t}")), &[&padded, &st, &en, &axes], vec![]);
            sum = Some(match sum {
                None => tap,
                Some(acc) => self.node("Add", &n(&format!("sum{t}")), &[&acc, &tap], vec![]),
            });
        }
        let sum = sum.expect("k > 1 taps");
        let axis = self.int64s(&n("tap_axis"), &[2]);
        let y5 = self.node("Squeeze", &n("squeeze"), &[&sum, &axis], vec![]);
        let y = self.node("Transpose", &n("to_volume"), &[&y5], vec![ints("perm", &[0, 2, 1, 3, 4])]);
        let b = self.weight(&format!("{name}.bias"), &[1, co, 1, 1, 1], bias);
        self.node("Add", name, &[&y, &b], vec![])
    }

    /// `Slice` of a 1-D int64 tensor to `[start, end)`.
    fn slice1(&mut self, name: &str, x: &str, start: i64, end: i64) -> String {
        let (st, en) = (self.int64s(&format!("{name}.start"), &[start]), self.int64s(&format!("{name}.end"), &[end]));
        self.node("Slice", name, &[x, &st, &en], vec![])
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

    /// The layout this builder writes (the head picks its CPU forms by it).
    pub fn layout(&self) -> Conv3dLayout {
        self.layout
    }

    /// `MatMul` (numpy broadcasting: a 2-D operand multiplies every matrix of the other).
    pub fn matmul(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node("MatMul", name, &[a, b], vec![])
    }

    /// `Transpose` by `perm`.
    pub fn transpose(&mut self, name: &str, x: &str, perm: &[usize]) -> String {
        self.node("Transpose", name, &[x], vec![ints("perm", perm)])
    }

    /// `Reshape` to a constant `shape` (`-1` for the one free axis, the batch).
    pub fn reshape(&mut self, name: &str, x: &str, shape: &[i64]) -> String {
        let s = self.int64s(&format!("{name}.shape"), shape);
        self.node("Reshape", name, &[x, &s], vec![])
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
