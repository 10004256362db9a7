//! `autopath-run serve` on a loopback port: segmentations equal the batch CLI's, bad bodies get 4xx
//! and the service keeps serving, oversize bodies 413, a full queue 503 while accepted requests
//! complete, SIGTERM lets an in-flight request finish and leaves no scratch files, and the token
//! guards the API.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command};

use autopath::input::volume::{read_volume, ReadOptions};

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(bundle: &Path, extra: &[&str]) -> Server {
        let (child, addr) = common::spawn_server(
            Command::new(env!("CARGO_BIN_EXE_autopath-run"))
                .args(["serve", "--bundle", bundle.to_str().unwrap(), "--addr", "127.0.0.1:0"])
                .args(extra),
        );
        Server { child, addr }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        common::http_with(&self.addr, method, path, headers, body)
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }
}

use common::header;

#[test]
fn segments_like_the_batch_cli_and_survives_bad_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let server = Server::start(&bundle, &["--max-body-mb", "1"]);
    let input = data.join("volume-2.nii.gz");
    let body = std::fs::read(&input).unwrap();

    let (status, headers, nifti) = server.request("POST", "/v1/segment?path=full", &[], &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&nifti));
    assert_eq!(header(&headers, "x-autopath-keep"), Some("11111111"));
    let served = dir.path().join("served.nii.gz");
    std::fs::write(&served, &nifti).unwrap();
    let cli = dir.path().join("cli.nii.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .args([
            "--bundle",
            bundle.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
            "-o",
            cli.to_str().unwrap(),
            "--path",
            "full",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (a, b) =
        (read_volume(&served, &ReadOptions::default()).unwrap(), read_volume(&cli, &ReadOptions::default()).unwrap());
    assert_eq!(a.data, b.data, "served and batch segmentations differ");
    assert_eq!(a.geometry.affine, b.geometry.affine);

    // Bad bodies: each a 4xx with the reason, and the service goes on.
    let raw = {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut v).unwrap();
        v
    };
    let mut four_d = raw.clone();
    four_d[40..42].copy_from_slice(&4i16.to_le_bytes());
    four_d[48..50].copy_from_slice(&3i16.to_le_bytes());
    let mut absurd = raw.clone();
    absurd[42..44].copy_from_slice(&30000i16.to_le_bytes());
    absurd[44..46].copy_from_slice(&30000i16.to_le_bytes());
    for (name, bad, why) in [
        ("text", b"not a volume".to_vec(), "file ends inside the header"),
        ("truncated gzip", body[..body.len() / 2].to_vec(), "file ends inside"),
        ("4D", four_d, "not a 3D image"),
        ("absurd header", absurd, "over the limit"),
    ] {
        let (status, _, msg) = server.request("POST", "/v1/segment", &[], &bad);
        let msg = String::from_utf8_lossy(&msg);
        assert!((400..500).contains(&status), "{name}: {status} {msg}");
        assert!(msg.contains(why) || msg.contains("gzip"), "{name}: {msg}");
    }
    let (status, _, _) = server.request("POST", "/v1/segment?path=123", &[], &body);
    assert_eq!(status, 400);
    // A FLOP budget needs the policy's calibration, and excludes an explicit threshold.
    let (status, _, msg) = server.request("POST", "/v1/segment?budget=0.7", &[], &body);
    assert_eq!((status, String::from_utf8_lossy(&msg).contains("budget needs one")), (400, true));
    let (status, _, msg) = server.request("POST", "/v1/segment?budget=0.7&threshold=0.5", &[], &body);
    assert_eq!((status, String::from_utf8_lossy(&msg).contains("not both")), (400, true));
    // A time budget is one or the other too, and says what it needs.
    let (status, _, msg) = server.request("POST", "/v1/segment?budget=0.7&time_budget=0.7", &[], &body);
    assert_eq!((status, String::from_utf8_lossy(&msg).contains("a FLOP budget or a time budget")), (400, true));
    let (status, _, msg) = server.request("POST", "/v1/segment?time_budget=x", &[], &body);
    assert_eq!((status, String::from_utf8_lossy(&msg).contains("time_budget \"x\"")), (400, true));
    // A request the bundle cannot serve is the client's fault: 422 with the reason (internal failures,
    // ONNX Runtime or I/O, answer 500: `Error::is_caller_fault`).
    let (status, _, msg) = server.request("POST", "/v1/segment?path=1011", &[], &body);
    assert_eq!((status, String::from_utf8_lossy(&msg).contains("has 4 entries")), (422, true));
    // Oversize.
    let (status, _, _) = server.request("POST", "/v1/segment", &[], &vec![0u8; 2 * 1024 * 1024]);
    assert_eq!(status, 413);
    let (status, _, ok) = server.request("GET", "/healthz", &[], b"");
    assert_eq!((status, ok), (200, b"ok\n".to_vec()));
    let (_, _, metrics) = server.request("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("autopath_requests_total{route=\"/v1/segment\",status=\"200\"} 1"), "{metrics}");
    assert!(metrics.contains("autopath_stage_seconds_count{stage=\"network\"} 1"));
    assert!(server.terminate().success());
}

#[test]
fn a_full_queue_answers_503_and_accepted_requests_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let server = std::sync::Arc::new(Server::start(&bundle, &["--workers", "1", "--queue", "1"]));
    let body = std::sync::Arc::new(std::fs::read(data.join("volume-0.nii.gz")).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (s, b) = (server.clone(), body.clone());
            std::thread::spawn(move || s.request("POST", "/v1/segment", &[], &b))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok + busy.len(), 8, "only 200 or 503: {:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(ok >= 1 && !busy.is_empty(), "{ok} ok, {} busy", busy.len());
    assert!(busy.iter().all(|r| header(&r.1, "retry-after").is_some()));
    assert!(results.iter().filter(|r| r.0 == 200).all(|r| r.2.len() > 100 && r.2[0] == 0x1f));
    let server = std::sync::Arc::try_unwrap(server).ok().unwrap();
    assert!(server.terminate().success());
}

#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, bundle) = common::trained_bundle(dir.path());
    // A volume large enough to be in flight when the signal arrives.
    let big = dir.path().join("big");
    let ok = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["synth", "--quiet", "--cases", "1", "--size", "48,192,192", "--out", big.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let body = std::fs::read(big.join("volume-0.nii.gz")).unwrap();
    // The server's scratch files go under a temporary folder of the test's own, to be checked after.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (child, addr) = common::spawn_server(
        Command::new(env!("CARGO_BIN_EXE_autopath-run"))
            .args(["serve", "--bundle", bundle.to_str().unwrap(), "--addr", "127.0.0.1:0"])
            .env("TMPDIR", &tmp),
    );
    let server = std::sync::Arc::new(Server { child, addr });
    let s = server.clone();
    let h = std::thread::spawn(move || s.request("POST", "/v1/segment", &[], &body));
    // Signal only once the server reports the request in flight (its own metrics), not after a guess.
    let in_flight = || {
        let (_, _, m) = server.request("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&m).lines().any(|l| l == "autopath_in_flight 1")
    };
    let mut polls = 0;
    while !in_flight() {
        polls += 1;
        assert!(polls < 10_000 && !h.is_finished(), "the request never showed as in flight");
        std::thread::yield_now();
    }
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    let (status, _, nifti) = h.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&nifti));
    assert_eq!(nifti[0], 0x1f);
    let mut server = std::sync::Arc::try_unwrap(server).ok().unwrap();
    assert!(server.child.wait().unwrap().success());
    // A stopped service leaves none of its scratch files behind (ONNX Runtime keeps a `.ses` file of
    // its own there).
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("autopath")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, bundle) = common::trained_bundle(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let server = Server::start(&bundle, &["--token-file", token.to_str().unwrap()]);
    assert_eq!(server.request("GET", "/v1/bundle", &[], b"").0, 401);
    assert_eq!(server.request("GET", "/v1/bundle", &[("Authorization", "Bearer wrong")], b"").0, 401);
    let (status, _, manifest) = server.request("GET", "/v1/bundle", &[("Authorization", "Bearer s3cret")], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&manifest).contains("\"schema_version\": 1"));
    assert_eq!(server.request("GET", "/healthz", &[], b"").0, 200);
    assert_eq!(server.request("GET", "/readyz", &[], b"").0, 200);
    assert_eq!(server.request("POST", "/v1/segment", &[], b"x").0, 401);
    assert!(server.terminate().success());
}

#[test]
fn concurrent_requests_on_one_path_share_network_calls_and_get_their_own_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let other = dir.path().join("other");
    let out = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args([
            "synth",
            "--quiet",
            "--cases",
            "1",
            "--size",
            "17,40,37",
            "--seed",
            "5",
            "--out",
            other.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inputs = [data.join("volume-1.nii.gz"), other.join("volume-0.nii.gz")];
    // One tile per request per call, two per shared call, and a long window so that the two requests
    // meet in the queue whatever the scheduling.
    let server = std::sync::Arc::new(Server::start(
        &bundle,
        &["--tile-batch", "1", "--share-tiles", "2", "--share-wait-ms", "3000", "--host-threads", "2"],
    ));
    let (status, _, ready) = server.request("GET", "/readyz", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&ready).contains("worker 0: cpu"), "{}", String::from_utf8_lossy(&ready));
    let (_, _, doc) = server.request("GET", "/v1/bundle", &[], b"");
    let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(doc["runtime"]["execution_providers"], serde_json::json!(["cpu"]));
    assert!(doc["architecture"].is_object(), "the manifest is still the document: {doc}");

    let handles: Vec<_> = inputs
        .iter()
        .map(|p| {
            let (s, body) = (server.clone(), std::fs::read(p).unwrap());
            std::thread::spawn(move || s.request("POST", "/v1/segment?path=full", &[], &body))
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (_, _, metrics) = server.request("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    let counter = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(metrics.contains("autopath_execution_provider{worker=\"0\",provider=\"cpu\"} 1"), "{metrics}");
    let (calls, tiles, shared) = (
        counter("autopath_network_calls_total"),
        counter("autopath_network_tiles_total"),
        counter("autopath_network_shared_calls_total"),
    );
    assert!(shared >= 1 && calls < tiles, "{calls} calls for {tiles} tiles, {shared} shared");

    for (input, (status, _, nifti)) in inputs.iter().zip(&answers) {
        assert_eq!(*status, 200, "{}", String::from_utf8_lossy(nifti));
        let served = dir.path().join("served.nii.gz");
        std::fs::write(&served, nifti).unwrap();
        let cli = dir.path().join("cli.nii.gz");
        let out = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
            .args(["--bundle", bundle.to_str().unwrap(), "-i", input.to_str().unwrap()])
            .args(["-o", cli.to_str().unwrap(), "--path", "full", "--tile-batch", "1", "--quiet"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (a, b) = (
            read_volume(&served, &ReadOptions::default()).unwrap(),
            read_volume(&cli, &ReadOptions::default()).unwrap(),
        );
        let source = read_volume(input, &ReadOptions::default()).unwrap();
        assert_eq!(a.geometry.shape, source.geometry.shape, "{}", input.display());
        assert_eq!(a.geometry.affine, source.geometry.affine);
        assert_eq!(a.data, b.data, "{}: a shared call changed the labels", input.display());
    }
    let server = std::sync::Arc::try_unwrap(server).ok().unwrap();
    assert!(server.terminate().success());
}
