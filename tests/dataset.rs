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

/// Label names and modality from `dataset.json`, as the Decathlon and nnU-Net v2 write it; names by
/// value either way, and the network's names from them (merged foreground joined by `+`).
#[test]
fn dataset_json_names_labels_and_modality() {
    use autopath::study::dataset::Description;
    let dir = tempfile::tempdir().unwrap();
    let msd =
        r#"{"name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "2": "cancer", "1": "liver"}}"#;
    std::fs::write(dir.path().join("dataset.json"), msd).unwrap();
    let d = Description::read(dir.path()).unwrap().unwrap();
    assert_eq!(d.labels, ["background", "liver", "cancer"]);
    assert_eq!(d.modality.as_deref(), Some("CT"));
    assert_eq!(d.output_labels(true, 2).unwrap(), ["background", "liver+cancer"]);
    assert_eq!(d.output_labels(false, 3).unwrap(), ["background", "liver", "cancer"]);
    let e = d.output_labels(false, 4).unwrap_err().to_string();
    assert!(e.contains("3 names (background, liver, cancer) for a network of 4 classes"), "{e}");
    let nnunet = r#"{"channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1}, "numTraining": 4}"#;
    std::fs::write(dir.path().join("dataset.json"), nnunet).unwrap();
    let d = Description::read(dir.path()).unwrap().unwrap();
    assert_eq!(
        (d.labels.as_slice(), d.modality.as_deref()),
        (["background".to_string(), "brain".into()].as_slice(), Some("T1"))
    );
    std::fs::write(dir.path().join("dataset.json"), r#"{"labels": {"0": "background", "2": "tumour"}}"#).unwrap();
    let e = Description::read(dir.path()).unwrap_err().to_string();
    assert!(e.contains("label values [0, 2] are not 0, 1, 2"), "{e}");
    std::fs::remove_file(dir.path().join("dataset.json")).unwrap();
    assert_eq!(Description::read(dir.path()).unwrap(), None);
}

/// `--spacing`: median, none, or three positive numbers; the median is taken axis by axis from the
/// headers.
#[test]
fn spacing_choices_parse_and_the_median_is_per_axis() {
    use autopath::study::dataset::{median_spacing, Case, SpacingChoice};
    assert_eq!("median".parse::<SpacingChoice>(), Ok(SpacingChoice::Median));
    assert_eq!("none".parse::<SpacingChoice>(), Ok(SpacingChoice::Native));
    assert_eq!("2.5,0.8,0.7".parse::<SpacingChoice>(), Ok(SpacingChoice::Fixed([2.5, 0.8, 0.7])));
    for bad in ["2.5,0.8", "0,1,1", "a,b,c", "-1,1,1"] {
        assert!(bad.parse::<SpacingChoice>().is_err(), "{bad}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = [(1.0, 0.5), (3.0, 0.7), (2.0, 0.9)]
        .iter()
        .enumerate()
        .map(|(i, (z, xy))| {
            let image = dir.path().join(format!("volume-{i}.nii"));
            let affine = [[*xy, 0.0, 0.0, 0.0], [0.0, *xy, 0.0, 0.0], [0.0, 0.0, *z, 0.0], [0.0, 0.0, 0.0, 1.0]];
            let g = autopath::input::volume::Geometry::new([2, 3, 4], affine);
            autopath::input::volume::write_image_i16(&image, &ndarray::Array3::zeros((2, 3, 4)), &g).unwrap();
            Case { id: i.to_string(), image, label: None }
        })
        .collect();
    let m = median_spacing(&cases).unwrap();
    assert!((m[0] - 2.0).abs() < 1e-6 && (m[1] - 0.7).abs() < 1e-6 && (m[2] - 0.7).abs() < 1e-6, "{m:?}");
}
