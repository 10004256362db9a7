//! Trained runs on disk → a bundle: the segmenter run's checkpoint, the policy run's best with how it
//! was trained, and the summary of an `eval` report. `autopath compile` and the demo both come through
//! here, so their manifests record the same things. It sits above training, evaluation and
//! [`crate::study::compile`], which knows only networks.

use std::path::Path;

use crate::error::{Error, Result};
use crate::study::compile::{compile, CompileOptions, CompileReport, PolicyInput};
use crate::study::eval::Results;
use crate::study::train::checkpoint::read_json;
use crate::study::train::policy::{load_policy, training_record};
use crate::study::train::segment::load_segmenter;

/// Compiles trained runs into a bundle: the segmenter run's `checkpoint`, the policy run's best (with
/// how it was trained), and the summary of an `eval` report, if given. `autopath compile` and the demo
/// both come through here, so their manifests record the same things.
pub fn compile_runs(
    seg: &Path,
    checkpoint: &str,
    policy: Option<&Path>,
    evaluation: Option<&Path>,
    out: &Path,
    opts: CompileOptions,
) -> Result<CompileReport> {
    let (net, cfg) = load_segmenter(seg, checkpoint)?;
    let loaded = policy.map(|p| load_policy(p, "best")).transpose()?;
    let policy_input = loaded.as_ref().map(|(p, c, m)| PolicyInput {
        net: p,
        threshold: m.deployed_threshold(c),
        training: Some(training_record(c, m)),
    });
    let evaluation = evaluation
        .map(read_json::<Results>)
        .transpose()?
        .map(|r| serde_json::to_value(r.summary))
        .transpose()
        .map_err(|e| Error::invalid("--evaluation", e.to_string()))?;
    compile(&net, &cfg, policy_input, evaluation, out, opts)
}
