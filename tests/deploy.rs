//! The deployment recipes in `docs/deploy/` run as written against the real CLI: the Slurm array
//! script and the Kubernetes Indexed Job's command split a cohort into disjoint shards that cover it,
//! and the Deployment's `serve` command becomes ready and serves metrics. Paths and the GPU provider
//! are the recipes' own; without a GPU `--allow-fallback` (in every recipe) runs them on the CPU.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

fn recipe(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy").join(name)).unwrap()
}

/// The `autopath-run …` command inside a YAML recipe's `sh -c "…"`.
fn command_in(yaml: &str) -> String {
    let start = yaml.find("\"autopath-run ").expect("an autopath-run command") + 1;
    let end = start + yaml[start..].find('"').expect("closing quote");
    yaml[start..end].to_string()
}

/// PATH with the built `autopath-run` first, as an installed binary would be.
fn path_with_binary() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_autopath-run")).parent().unwrap().display().to_string();
    format!("{bin}:{}", std::env::var("PATH").unwrap_or_default())
}

fn outputs(dir: &Path) -> BTreeSet<String> {
    common::listing(dir).into_iter().filter(|n| n.ends_with(".nii.gz")).collect()
}

fn inputs(data: &Path, dir: &Path) -> BTreeSet<String> {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(data).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("volume-") {
            std::fs::copy(&p, dir.join(&name)).unwrap();
        }
    }
    outputs(dir)
}

#[test]
fn batch_recipes_split_a_cohort_into_disjoint_shards_that_cover_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let input = dir.path().join("in");
    let all = inputs(&data, &input);
    assert!(all.len() >= 3);

    // Slurm: the script itself, two array tasks.
    let out = dir.path().join("slurm-out");
    let mut seen = Vec::new();
    for task in 0..2 {
        let res = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy/slurm-array.sh"))
            .env("PATH", path_with_binary())
            .env("ORT_DYLIB_PATH", common::ort_library())
            .envs([("BUNDLE", &bundle), ("IN", &input), ("OUT", &out)])
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .output()
            .unwrap();
        assert!(res.status.success(), "slurm task {task}: {}", String::from_utf8_lossy(&res.stderr));
        seen.push(outputs(&out).len());
        assert!(out.join(format!("report-{task}.jsonl")).is_file());
    }
    assert!(seen[0] > 0 && seen[0] < all.len(), "shard 0 took {} of {}", seen[0], all.len());
    assert_eq!(outputs(&out), all);

    // Kubernetes Indexed Job: its container command with the pod's index, paths mapped to the test's.
    let cmd = command_in(&recipe("k8s-indexed-job.yaml"));
    let out = dir.path().join("k8s-out");
    std::fs::create_dir_all(&out).unwrap();
    let mut per_pod: Vec<BTreeSet<String>> = Vec::new();
    for index in 0..2 {
        let before = outputs(&out);
        let local = cmd
            .replace("/bundle", bundle.to_str().unwrap())
            .replace("/data/in", input.to_str().unwrap())
            .replace("/data/out", out.to_str().unwrap());
        let res = Command::new("sh")
            .args(["-c", &local])
            .env("PATH", path_with_binary())
            .env("ORT_DYLIB_PATH", common::ort_library())
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("SHARDS", "2")
            .output()
            .unwrap();
        assert!(res.status.success(), "pod {index}: {}", String::from_utf8_lossy(&res.stderr));
        per_pod.push(outputs(&out).difference(&before).cloned().collect());
    }
    assert!(per_pod[0].is_disjoint(&per_pod[1]) && !per_pod[0].is_empty());
    assert_eq!(outputs(&out), all);
}

#[test]
fn the_serve_deployment_becomes_ready_and_exposes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, bundle) = common::trained_bundle(dir.path());
    let yaml = recipe("k8s-serve-deployment.yaml");
    let cmd = command_in(&yaml).replace("/bundle", bundle.to_str().unwrap()).replace("0.0.0.0:8080", "127.0.0.1:0");
    let (mut child, addr) = common::spawn_server(
        Command::new("sh")
            .args(["-c", &format!("exec {cmd}")])
            .env("PATH", path_with_binary())
            .env("ORT_DYLIB_PATH", common::ort_library()),
    );
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    // The probes and the scrape path the recipe names.
    for path in ["/readyz", "/healthz", "/metrics"] {
        assert!(yaml.contains(path), "{path} not in the recipe");
        let r = get(path);
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
    }
    // Stopped as Kubernetes stops a pod: SIGTERM, then a clean exit.
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}
