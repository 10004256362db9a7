//! The deployable runtime: no training stack linked, and a missing ONNX Runtime is a clear error.

mod common;

use std::process::Command;

fn tree(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", "autopath", "-e", "normal", "--prefix", "none", "--offline"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn runtime_build_links_no_candle() {
    let runtime = tree(&["--no-default-features"]);
    assert!(runtime.lines().any(|l| l.starts_with("ort ")), "the runtime uses ort:\n{runtime}");
    let candle: Vec<&str> = runtime.lines().filter(|l| l.contains("candle")).collect();
    assert!(candle.is_empty(), "runtime build pulls in {candle:?}");
    // The check can fail: the default (training) build does contain Candle.
    assert!(tree(&[]).lines().any(|l| l.starts_with("candle-core ")));
}

#[test]
fn missing_onnxruntime_library_is_a_clear_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .arg("--check-ort")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so") && err.contains("make setup"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A file that is not a library: refused by the loader, still no panic.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .arg("--check-ort")
        .env("ORT_DYLIB_PATH", &fake)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load") && !err.contains("panicked"), "{err}");
}

#[test]
fn installed_onnxruntime_is_found_in_the_project_folder() {
    let lib = common::ort_library();
    assert!(lib.is_file(), "{} missing: run `make setup`", lib.display());
    // No ORT_DYLIB_PATH: the project's .deps/ folder is searched.
    let out = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .arg("--check-ort")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(".deps/python/onnxruntime/capi/libonnxruntime.so.1.31.1"), "{text}");
}
