//! The oracle's beam search (what `eval` uses for N > 10, e.g. ResNet-50) against the exhaustive
//! search where every path can be scored (N = 8): the same best path for both objectives.

mod common;

use autopath::study::dataset::Dataset;
use autopath::study::path_eval::PathEvaluator;
use autopath::study::search::{beam, exhaustive, Objective, BEAM_WIDTH};
use autopath::study::train::data::load_sample;
use autopath::study::train::segment::TrainConfig;
use autopath_bundle::Bundle;

#[test]
fn beam_search_finds_the_exhaustive_oracle_path_on_every_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run, bundle) = common::trained_bundle(dir.path());
    let cfg: TrainConfig = autopath::study::train::checkpoint::read_json(&run.join("config.json")).unwrap();
    let bundle = Bundle::load(&bundle).unwrap();
    let arch = bundle.manifest.architecture.clone();
    let mut ev = PathEvaluator::open(&bundle, cfg.window, 2).unwrap();
    let ds = Dataset::open(&data, None).unwrap();
    let mut distinct = std::collections::HashSet::new();
    for case in &ds.cases {
        let s = load_sample(case, &cfg.preprocessing).unwrap();
        let prepared = ev.prepare(&s.image, s.record.pad_value, Some(s.labels.clone())).unwrap();
        let all = exhaustive(&mut ev, &prepared, &arch).unwrap();
        assert_eq!(all.paths.len(), 256);
        for objective in [
            Objective::Reward { tau: 50.0 },
            Objective::DiceTolerance { delta: 0.005 },
            Objective::DiceTolerance { delta: 0.02 },
        ] {
            let searched = beam(&mut ev, &prepared, &arch, objective, BEAM_WIDTH).unwrap();
            assert!(searched.paths.len() < 256, "a beam scores fewer paths than exist");
            assert_eq!(searched.full_dice, all.full_dice);
            let (want, got) = (all.best(objective), searched.best(objective));
            assert_eq!(got.mask, want.mask, "case {} {objective:?}", case.id);
            assert_eq!(got.dice, want.dice);
            distinct.insert(want.mask.clone());
        }
    }
    // Not a trivial case: the oracle paths differ between volumes and objectives.
    assert!(distinct.len() >= 2, "{distinct:?}");
}
