//! `autopath bench --calibrate`: each graph of a bundle timed on the provider it will run on, so that a
//! budget can be a fraction of the user's clock rather than of the FLOPs (`compile --cost`,
//! `autopath-run --time-budget`).
//!
//! One call of `tile_batch` tiles of the bundle's size (a fixed pseudo-random image) is pushed through
//! the chain once to give every graph its real input; then, round after round, each graph runs once on
//! its input (stem, every kept block, every projection shortcut, head, `full.onnx`), so that a drift in
//! the machine's speed spreads over all of them; the table keeps each graph's median.

use std::time::Instant;

use ndarray::Array5;

use autopath_bundle::{BlockTime, Bundle, MeasuredCost, PathCost};

use crate::deploy::chain::Segment;
use crate::deploy::{ExecutionProvider, SessionOptions, Sessions};
use crate::error::{Error, Result};

/// A graph's input, and how to run it.
enum Graph {
    Segment(Segment, Array5<f32>),
    Head(Array5<f32>, Option<Array5<f32>>),
    Full(Array5<f32>),
}

fn run(s: &mut Sessions, g: &Graph) -> Result<f64> {
    let t = Instant::now();
    match g {
        Graph::Segment(seg, x) => {
            s.run_segment(*seg, x.view())?;
        }
        Graph::Head(x, low) => s.run_head_with(x.view(), low.as_ref().map(|l| l.view()), |_| ())?,
        Graph::Full(x) => s.run_full_with(x.view(), |_| ())?,
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// A deterministic image tile batch in the network's normalised range.
fn tiles(batch: usize, patch: [usize; 3]) -> Array5<f32> {
    let [d, h, w] = patch;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    Array5::from_shape_simple_fn((batch, 1, d, h, w), || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    })
}

/// The graphs of `bundle` with their inputs: the chain run once on `x`.
fn graphs(s: &mut Sessions, bundle: &Bundle, x: Array5<f32>) -> Result<Vec<Graph>> {
    let arch = &bundle.manifest.architecture;
    let mut out = vec![Graph::Full(x.clone())];
    let mut f = s.run_segment(Segment::Stem, x.view())?;
    out.push(Graph::Segment(Segment::Stem, x));
    let mut low = None;
    for n in 0..arch.blocks.len() {
        let y = s.run_segment(Segment::Block(n), f.view())?;
        if s.shortcuts[n].is_some() {
            out.push(Graph::Segment(Segment::Shortcut(n), f.clone()));
        }
        out.push(Graph::Segment(Segment::Block(n), std::mem::replace(&mut f, y)));
        if arch.low_level.as_ref().is_some_and(|l| l.after_block == n) {
            low = Some(f.clone());
        }
    }
    out.push(Graph::Head(f, low));
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times every graph of the bundle in `dir` on `session`'s provider: `warmup` rounds, then the median
/// of `repeats` rounds.
pub fn calibrate(
    dir: &std::path::Path,
    session: &SessionOptions,
    tile_batch: usize,
    warmup: usize,
    repeats: usize,
) -> Result<MeasuredCost> {
    if repeats == 0 || tile_batch == 0 {
        return Err(Error::invalid("--calibrate", "needs at least one repeat and one tile per call"));
    }
    let bundle = Bundle::load(dir)?;
    let mut s = Sessions::open(&bundle, session)?;
    let patch = bundle.manifest.input.window.patch;
    let graphs = graphs(&mut s, &bundle, tiles(tile_batch, patch))?;
    let mut times = vec![Vec::with_capacity(repeats); graphs.len()];
    for round in 0..warmup + repeats {
        for (g, t) in graphs.iter().zip(times.iter_mut()) {
            let ms = run(&mut s, g)?;
            if round >= warmup {
                t.push(ms);
            }
        }
    }
    let blocks = bundle.manifest.architecture.blocks.len();
    let mut cost = MeasuredCost {
        provider: session.ep.name().into(),
        device: match session.ep {
            ExecutionProvider::Cpu => crate::study::bench::cpu_model(),
            _ => format!("device {}", session.device_id),
        },
        tile_batch,
        stem_ms: 0.0,
        head_ms: 0.0,
        blocks: vec![BlockTime { kept_ms: 0.0, shortcut_ms: 0.0 }; blocks],
        full_ms: 0.0,
    };
    for (g, t) in graphs.iter().zip(times) {
        let ms = median(t);
        match g {
            Graph::Full(_) => cost.full_ms = ms,
            Graph::Head(..) => cost.head_ms = ms,
            Graph::Segment(Segment::Stem, _) => cost.stem_ms = ms,
            Graph::Segment(Segment::Block(n), _) => cost.blocks[*n].kept_ms = ms,
            Graph::Segment(Segment::Shortcut(n), _) => cost.blocks[*n].shortcut_ms = ms,
        }
    }
    Ok(cost)
}

/// The table as Markdown: per graph its time and share of the chain, per block its FLOP share against
/// its time share (what a dropped block saves by each measure).
pub fn markdown(cost: &MeasuredCost, flops: &impl PathCost) -> String {
    let total = cost.full_flops() as f64 / 1e6;
    let (bf, tf) = (flops.block_flops(), flops.full_flops() as f64);
    let mut s = format!(
        "{} on {} ({} tiles per call); chain {total:.2} ms, full.onnx {:.2} ms\n\n| graph | ms | share of the chain's time | share of the FLOPs |\n|---|---:|---:|---:|\n",
        cost.provider, cost.device, cost.tile_batch, cost.full_ms
    );
    let sh = flops.stem_and_head_flops() as f64;
    s += &format!(
        "| stem + head | {:.2} | {:.1} % | {:.1} % |\n",
        cost.stem_ms + cost.head_ms,
        100.0 * (cost.stem_ms + cost.head_ms) / total,
        100.0 * sh / tf
    );
    for (n, (b, (branch, shortcut))) in cost.blocks.iter().zip(&bf).enumerate() {
        let saved = (b.kept_ms - b.shortcut_ms).max(0.0);
        s += &format!(
            "| block {n} (dropping saves) | {:.2} ({saved:.2}) | {:.1} % ({:.1} %) | {:.1} % ({:.1} %) |\n",
            b.kept_ms,
            100.0 * b.kept_ms / total,
            100.0 * saved / total,
            100.0 * (branch + shortcut) as f64 / tf,
            100.0 * *branch as f64 / tf
        );
    }
    s
}
