//! Dataset layouts are recognised from their files, and splits are deterministic and complete.

use std::path::Path;

use autopath::study::dataset::{Dataset, Layout, Split};

fn touch(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

fn lits(dir: &Path, ids: impl IntoIterator<Item = u32>) {
    for k in ids {
        touch(&dir.join(format!("volume-{k}.nii")));
        touch(&dir.join(format!("segmentation-{k}.nii.gz")));
    }
}

#[test]
fn detects_lits_with_numeric_order_and_mixed_extensions() {
    let dir = tempfile::tempdir().unwrap();
    lits(dir.path(), [10, 2, 1]);
    touch(&dir.path().join("volume-99.nii.gz")); // no label: listed, but not labelled
    let ds = Dataset::open(dir.path(), None).unwrap();
    assert_eq!(ds.layout, Layout::Lits);
    let ids: Vec<&str> = ds.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "10", "99"]);
    assert_eq!(ds.labelled().len(), 3);
    assert!(ds.cases[2].label.as_ref().unwrap().ends_with("segmentation-10.nii.gz"));
}

#[test]
fn detects_decathlon_and_nnunet() {
    let dir = tempfile::tempdir().unwrap();
    let msd = dir.path().join("Task03_Liver");
    for k in [0, 1, 5] {
        touch(&msd.join(format!("imagesTr/liver_{k}.nii.gz")));
        touch(&msd.join(format!("labelsTr/liver_{k}.nii.gz")));
    }
    touch(&msd.join("imagesTr/._liver_0.nii.gz")); // macOS metadata file
    let ds = Dataset::open(&msd, None).unwrap();
    assert_eq!(ds.layout, Layout::Msd);
    assert_eq!(ds.cases.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["liver_0", "liver_1", "liver_5"]);

    let nn = dir.path().join("Dataset003_Liver");
    for case in ["liver_000", "liver_001"] {
        touch(&nn.join(format!("imagesTr/{case}_0000.nii.gz")));
        touch(&nn.join(format!("labelsTr/{case}.nii.gz")));
    }
    let ds = Dataset::open(&nn, None).unwrap();
    assert_eq!(ds.layout, Layout::Nnunet);
    assert_eq!(ds.labelled().len(), 2);
    assert!(ds.cases[0].label.as_ref().unwrap().ends_with("labelsTr/liver_000.nii.gz"));
}

#[test]
fn unknown_layout_says_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    touch(&dir.path().join("scan.nii.gz"));
    let err = Dataset::open(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("volume-K.nii") && err.contains("imagesTr"), "{err}");
    let err = Dataset::open(dir.path(), Some(Layout::Lits)).unwrap_err().to_string();
    assert!(err.contains("no cases found for the Lits layout"), "{err}");
    let err = Dataset::open(&dir.path().join("nope"), None).unwrap_err().to_string();
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn ratio_split_is_deterministic_by_seed_and_partitions_the_cases() {
    let dir = tempfile::tempdir().unwrap();
    lits(dir.path(), 0..20);
    let ds = Dataset::open(dir.path(), None).unwrap();
    let split = |seed| ds.split(&Split::Ratio { test: 0.25, seed }).unwrap();
    let (train, test) = split(3);
    assert_eq!((train.len(), test.len()), (15, 5));
    assert_eq!(split(3), (train.clone(), test.clone()));
    assert_ne!(split(4).1, test, "another seed gives another split");
    let mut all: Vec<String> = train.iter().chain(&test).map(|c| c.id.clone()).collect();
    all.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(all, (0..20).map(|k| k.to_string()).collect::<Vec<_>>());
    // Parsing from the command line.
    assert_eq!("0.25".parse::<Split>().unwrap().with_seed(3), Split::Ratio { test: 0.25, seed: 3 });
    assert!("1.5".parse::<Split>().is_err());
}

#[test]
fn list_and_3dircadb_splits() {
    let dir = tempfile::tempdir().unwrap();
    lits(dir.path(), 20..50);
    let ds = Dataset::open(dir.path(), None).unwrap();
    let (train, test) = ds.split(&"3dircadb".parse().unwrap()).unwrap();
    assert_eq!(test.iter().map(|c| c.id.parse::<u32>().unwrap()).collect::<Vec<_>>(), (28..=47).collect::<Vec<_>>());
    assert_eq!(train.len(), 10);

    let list = dir.path().join("test.txt");
    std::fs::write(&list, "# held out\n21\n 30 \n\n").unwrap();
    let (_, test) = ds.split(&Split::List(list.clone())).unwrap();
    assert_eq!(test.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["21", "30"]);

    std::fs::write(&list, "21\n7\n").unwrap();
    let err = ds.split(&Split::List(list)).unwrap_err().to_string();
    assert!(err.contains("[\"7\"]"), "{err}");

    // 3dircadb on a dataset without cases 28–47 leaves no test set: an error, not an empty evaluation.
    let small = tempfile::tempdir().unwrap();
    lits(small.path(), 0..10);
    let err = Dataset::open(small.path(), None).unwrap().split(&Split::Ircadb).unwrap_err().to_string();
    assert!(err.contains("0 test cases"), "{err}");
}
