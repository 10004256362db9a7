//! Helpers shared by the integration tests: the Python tools the set-up installs (nibabel, onnx) serve
//! as independent references.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Folder of the Python packages installed by `make setup`.
pub fn python_path() -> PathBuf {
    std::env::var_os("AUTOPATH_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/python"))
}

/// Runs a script from `tests/python/` with the project's Python packages; returns stdout.
/// Panics with the script's stderr (a test failure) if it fails.
pub fn python(script: &str, args: &[&str]) -> String {
    let deps = python_path();
    assert!(
        deps.join("nibabel").is_dir(),
        "Python test dependencies missing in {}: run `make setup` (or `make test`)",
        deps.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .args(args)
        .env("PYTHONPATH", &deps)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a Python script and parses its stdout as JSON.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = python(script, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{script} printed invalid JSON ({e}):\n{out}"))
}

/// Files in a directory (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The ONNX Runtime library installed by `make setup`.
pub fn ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(autopath::deploy::ort_library::PROJECT_LIBRARY))
}

/// Runs `autopath ARGS`, fails the test with its stderr if it fails, and returns its stdout.
pub fn autopath(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_autopath")).args(args).output().unwrap();
    assert!(out.status.success(), "autopath {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tiny trained bundle: phantoms, a briefly trained r18 at width 4, compiled. Returns
/// `(data, run, bundle)` under `root`. Unresampled (`--spacing none`), so that its outputs can be
/// compared voxel for voxel with predictions on the network's grid; tests/dicom.rs trains a resampled one.
pub fn trained_bundle(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (data, run, bundle) = (root.join("data"), root.join("run"), root.join("bundle"));
    autopath(&[
        "synth",
        "--quiet",
        "--cases",
        "5",
        "--size",
        "20,48,44",
        "--seed",
        "11",
        "--out",
        data.to_str().unwrap(),
    ]);
    autopath(&[
        "train",
        "--quiet",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--arch",
        "r18",
        "--width",
        "4",
        "--patch",
        "16,32,32",
        "--epochs",
        "3",
        "--batch",
        "2",
        "--lr",
        "0.003",
        "--val-every",
        "3",
        "--val-cases",
        "1",
        "--split",
        "0.2",
        "--spacing",
        "none",
    ]);
    autopath(&["compile", "--seg", run.to_str().unwrap(), "--out", bundle.to_str().unwrap()]);
    (data, run, bundle)
}

/// Spawns `command` (an `autopath-run serve …`) with stdout piped and returns the child and the
/// address from its first line, `listening on http://ADDR`.
pub fn spawn_server(command: &mut Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("unexpected: {line}"));
    (child, addr.to_string())
}

/// One HTTP/1.1 request over a fresh connection: status, headers (names lower-cased) and body.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let text = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = text.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let hs =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string())).collect();
    (status, hs, raw[split + 4..].to_vec())
}

/// [`http_with`] without extra headers.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_with(addr, method, path, &[], body)
}

/// A response header's value.
pub fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}
