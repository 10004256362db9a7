//! The study (behind the `train` feature): synthetic data and datasets, training the segmenter and the
//! policy in Candle, compiling bundles, evaluating paths, the paper's study and the benchmark, and the
//! demo that runs them all.

pub mod bench;
pub mod calibrate;
pub mod compile;
pub mod dataset;
pub mod demo;
pub mod eval;
pub mod figures;
pub mod packaging;
pub mod path_eval;
pub mod search;
pub mod seeds;
pub mod synth;
pub mod train;
