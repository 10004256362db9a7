//! The GPU build of ONNX Runtime (`make setup-gpu`) on a machine without a GPU: it loads, its CPU
//! provider gives the CPU build's results exactly, `--ep cuda` names the missing driver library,
//! `--ep tensorrt --allow-fallback` goes TensorRT → CUDA → CPU, and `--check-ort` lists the providers.
//! Skipped, with the reason printed, when the GPU folder is absent.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gpu_library() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/python-gpu/onnxruntime/capi/libonnxruntime.so.1.31.1");
    if p.is_file() {
        Some(p)
    } else {
        // Straight to the terminal: the test harness hides what passing tests print.
        let line = format!("SKIPPED: {} is missing (run `make setup-gpu` to test the GPU library)\n", p.display());
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        None
    }
}

fn run_with(library: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autopath-run")).env("ORT_DYLIB_PATH", library).args(args).output().unwrap()
}

fn has_gpu() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

#[test]
fn the_gpu_library_loads_and_lists_its_providers() {
    let Some(lib) = gpu_library() else { return };
    let res = run_with(&lib, &["--check-ort"]);
    let out = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(out.contains(&lib.display().to_string()), "{out}");
    assert!(out.contains("nvidia/cu13/lib") && out.contains("nvidia/cudnn/lib"), "{out}");
    for name in ["cpu", "cuda", "tensorrt"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(name)), "{name} missing from:\n{out}");
    }
    if !has_gpu() {
        let cuda = out.lines().find(|l| l.trim_start().starts_with("cuda")).unwrap_or_default();
        assert!(cuda.contains("not available") && cuda.contains("libcuda.so.1"), "{out}");
    }
}

#[test]
fn the_gpu_library_on_cpu_equals_the_cpu_library_and_gpu_providers_fail_or_fall_back_in_order() {
    let Some(gpu) = gpu_library() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let input = data.join("volume-1.nii.gz");
    let seg = |lib: &Path, name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["--bundle", bundle.to_str().unwrap(), "-i", input.to_str().unwrap()];
        args.extend(["-o", out.to_str().unwrap(), "--quiet", "--path", "10110111"]);
        args.extend(extra);
        (run_with(lib, &args), out)
    };
    let (a, out_cpu) = seg(&common::ort_library(), "cpu-lib.nii.gz", &[]);
    let (b, out_gpu) = seg(&gpu, "gpu-lib.nii.gz", &[]);
    assert!(a.status.success() && b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(std::fs::read(&out_cpu).unwrap(), std::fs::read(&out_gpu).unwrap(), "CPU provider results differ");
    if has_gpu() {
        return;
    }
    let (c, out) = seg(&gpu, "cuda.nii.gz", &["--ep", "cuda"]);
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(!c.status.success() && err.contains("libcuda.so.1") && !out.exists(), "{err}");
    let (d, out) = seg(&gpu, "trt.nii.gz", &["--ep", "tensorrt", "--allow-fallback", "--no-trt-cache"]);
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(d.status.success() && out.exists(), "{err}");
    let warning = err.lines().find(|l| l.starts_with("warning:")).unwrap_or_default();
    let (t, c, p) =
        (warning.find("Tensorrt unavailable"), warning.find("Cuda unavailable"), warning.find("running on Cpu"));
    assert!(matches!((t, c, p), (Some(t), Some(c), Some(p)) if t < c && c < p), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out_cpu).unwrap());
}
