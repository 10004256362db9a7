//! `autopath-run serve`: the runtime as a long-lived HTTP service (axum + tokio).
//!
//! Requests are queued to a fixed pool of host threads, which decode, preprocess, blend and encode;
//! the graphs run in the predictor's network threads (one session set each), so one request is
//! decoded while another is in the network. Concurrent requests on the same path share network calls
//! (up to `share_tiles` tiles). The queue is bounded: when it is full the service answers 503 with
//! Retry-After instead of piling up memory. SIGTERM stops accepting connections and lets in-flight
//! requests finish.

use autopath_bundle::PathCost;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::deploy::network::Batching;
use crate::deploy::predict::StageTimes;
use crate::deploy::{PathChoice, Predictor, PredictorOptions, SessionOptions};
use crate::error::{Error, Result};
use crate::input::dicom::{write_seg, SeriesReference};
use crate::input::source::{OutputType, Source};
use crate::input::volume::{read_volume, write_label_map, Volume};

/// Service settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bundle folder.
    pub bundle: PathBuf,
    /// Listen address (loopback by default).
    pub addr: String,
    /// Network threads, each with its own session set.
    pub workers: usize,
    /// Host threads: requests decoded, blended and encoded at once (at least 1).
    pub host_threads: usize,
    /// Most tiles in one network call shared by concurrent requests on the same path (at most
    /// `tile_batch` from one request); `tile_batch` or less: no sharing.
    pub share_tiles: usize,
    /// How long a network call with room waits for other active requests' tiles.
    pub share_wait: Duration,
    /// Audit runs (None: never).
    pub audit: Option<crate::deploy::audit::Audit>,
    /// The guard for unfamiliar volumes (`--guard`).
    pub guard: bool,
    /// Requests waiting beyond the running ones before 503.
    pub queue: usize,
    /// Largest accepted body, bytes (413 above).
    pub max_body: usize,
    /// Per-request limit (504 after).
    pub timeout: Duration,
    /// Bearer token required on everything but the health endpoints.
    pub token: Option<String>,
    /// Session options.
    pub session: SessionOptions,
    /// Tiles per network call.
    pub tile_batch: usize,
}

enum Task {
    /// Segment on this path and answer in this format.
    Segment(PathChoice, OutputType),
    Policy,
}

struct Job {
    task: Task,
    body: Bytes,
    /// The body is a zipped DICOM series (`Content-Type: application/zip`), not a NIfTI volume.
    zipped: bool,
    reply: tokio::sync::oneshot::Sender<Result<Reply>>,
}

enum Reply {
    Segmentation {
        /// The encoded labels, and their content type.
        bytes: Vec<u8>,
        content_type: &'static str,
        keep: String,
        kept: usize,
        flop_fraction: f64,
        times: StageTimes,
        audit: Option<crate::deploy::audit::AuditOutcome>,
    },
    Policy {
        keep: String,
        probabilities: Vec<f32>,
    },
}

const STAGES: [&str; 6] = ["read", "preprocess", "policy", "network", "stitch", "write"];
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram: counts per bucket (cumulative), sum of seconds, count.
type Histogram = (Vec<u64>, f64, u64);

#[derive(Default)]
struct Metrics {
    requests: Mutex<HashMap<(String, u16), u64>>,
    stage_hist: Mutex<HashMap<String, Histogram>>,
    kept: Vec<AtomicU64>,
    dropped: Vec<AtomicU64>,
    in_flight: AtomicU64,
    queued: AtomicU64,
    /// Agreement of audited requests: counts per bucket (cumulative), sum, count; and the answers that
    /// were the full network's.
    audit: Mutex<(Vec<u64>, f64, u64)>,
    audit_fallbacks: AtomicU64,
}

const AGREEMENT_BUCKETS: [f64; 8] = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0];

impl Metrics {
    fn count(&self, route: &str, status: StatusCode) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status.as_u16())).or_default() += 1;
    }

    fn observe(&self, stage: &str, seconds: f64) {
        let mut h = self.stage_hist.lock().unwrap_or_else(|e| e.into_inner());
        let e = h.entry(stage.to_string()).or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                e.0[i] += 1;
            }
        }
        e.1 += seconds;
        e.2 += 1;
    }

    fn audited(&self, a: &crate::deploy::audit::AuditOutcome) {
        let mut h = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; AGREEMENT_BUCKETS.len()];
        }
        for (i, b) in AGREEMENT_BUCKETS.iter().enumerate() {
            if a.agreement <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += a.agreement;
        h.2 += 1;
        if a.answered_full {
            self.audit_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        drop(h);
        self.observe("audit", a.seconds);
    }

    fn render_audit(&self) -> String {
        let h = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::from("# HELP autopath_audit_agreement Foreground Dice of an audited request's path labels against the full network's.\n# TYPE autopath_audit_agreement histogram\n");
        for (i, le) in AGREEMENT_BUCKETS.iter().enumerate() {
            s += &format!("autopath_audit_agreement_bucket{{le=\"{le}\"}} {}\n", h.0.get(i).copied().unwrap_or(0));
        }
        s += &format!("autopath_audit_agreement_bucket{{le=\"+Inf\"}} {}\nautopath_audit_agreement_sum {}\nautopath_audit_agreement_count {}\n", h.2, h.1, h.2);
        s += &format!("# HELP autopath_audit_full_answers_total Audited requests answered with the full network's labels.\n# TYPE autopath_audit_full_answers_total counter\nautopath_audit_full_answers_total {}\n", self.audit_fallbacks.load(Ordering::Relaxed));
        s
    }

    fn render(&self) -> String {
        let mut s = String::from(
            "# HELP autopath_requests_total Requests by route and status.\n# TYPE autopath_requests_total counter\n",
        );
        let mut reqs: Vec<_> =
            self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect();
        reqs.sort();
        for ((route, code), v) in reqs {
            s += &format!("autopath_requests_total{{route=\"{route}\",status=\"{code}\"}} {v}\n");
        }
        s += "# HELP autopath_stage_seconds Time per stage of a segmentation.\n# TYPE autopath_stage_seconds histogram\n";
        let h = self.stage_hist.lock().unwrap_or_else(|e| e.into_inner());
        for stage in ["total"].iter().chain(STAGES.iter()).chain(["audit"].iter()) {
            if let Some((b, sum, n)) = h.get(*stage) {
                for (i, le) in BUCKETS.iter().enumerate() {
                    s += &format!("autopath_stage_seconds_bucket{{stage=\"{stage}\",le=\"{le}\"}} {}\n", b[i]);
                }
                s += &format!("autopath_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {n}\nautopath_stage_seconds_sum{{stage=\"{stage}\"}} {sum}\nautopath_stage_seconds_count{{stage=\"{stage}\"}} {n}\n");
            }
        }
        s += "# HELP autopath_block_runs_total Per block, how often it was kept or dropped.\n# TYPE autopath_block_runs_total counter\n";
        for (n, (k, d)) in self.kept.iter().zip(&self.dropped).enumerate() {
            s += &format!("autopath_block_runs_total{{block=\"{n}\",decision=\"kept\"}} {}\nautopath_block_runs_total{{block=\"{n}\",decision=\"dropped\"}} {}\n", k.load(Ordering::Relaxed), d.load(Ordering::Relaxed));
        }
        s += &format!(
            "# HELP autopath_in_flight Requests being processed.\n# TYPE autopath_in_flight gauge\nautopath_in_flight {}\n# HELP autopath_queue_length Requests waiting for a worker.\n# TYPE autopath_queue_length gauge\nautopath_queue_length {}\n",
            self.in_flight.load(Ordering::Relaxed),
            self.queued.load(Ordering::Relaxed)
        );
        s
    }
}

struct AppState {
    jobs: SyncSender<Job>,
    /// The manifest with a `runtime` section: providers per network thread, threads, batching.
    manifest: String,
    /// One line saying the providers the network threads run on, for `/readyz`.
    ready: String,
    predictor: Arc<Predictor>,
    /// The bundle's policy entry, for `?budget=` (its calibration).
    policy: Option<autopath_bundle::PolicyEntry>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    timeout: Duration,
}

fn work(p: &Predictor, scratch: &Path, job: &Job, metrics: &Metrics) -> Result<Reply> {
    // Opened before decoding: a network call with room waits (briefly) for this request's tiles.
    let stream = p.stream();
    let mut times = StageTimes::default();
    let t = Instant::now();
    let (volume, reference) = read_body(p, scratch, job)?;
    times.read = t.elapsed().as_secs_f64();
    match &job.task {
        Task::Policy => {
            drop(stream);
            let (image, _) = p.preprocess(&volume)?;
            if p.bundle().manifest.policy.is_none() {
                return Err(Error::request("policy", "the bundle has no policy"));
            }
            let (keep, probabilities) = p.keep_mask(&image, &PathChoice::Auto { threshold: None })?;
            Ok(Reply::Policy {
                keep: crate::labels::mask_text(&keep),
                probabilities: probabilities.unwrap_or_default(),
            })
        }
        Task::Segment(choice, output) => {
            let seg = p.segment_on(stream, &volume, choice, &mut times)?;
            let t = Instant::now();
            let (bytes, content_type) = encode(p, scratch, &seg.labels, &volume, reference.as_ref(), *output)?;
            times.write = t.elapsed().as_secs_f64();
            for (n, &k) in seg.keep.iter().enumerate() {
                let c = if k { &metrics.kept[n] } else { &metrics.dropped[n] };
                c.fetch_add(1, Ordering::Relaxed);
            }
            let arch = &p.bundle().manifest.architecture;
            Ok(Reply::Segmentation {
                bytes,
                content_type,
                keep: crate::labels::mask_text(&seg.keep),
                kept: seg.keep.iter().filter(|&&k| k).count(),
                flop_fraction: arch.flop_fraction(&seg.keep),
                times,
                audit: seg.audit,
            })
        }
    }
}

/// A scratch name unique to this host thread.
fn scratch_name(scratch: &Path, suffix: &str) -> PathBuf {
    let id = std::thread::current().id();
    scratch.join(format!("{id:?}-{suffix}").replace(['(', ')'], ""))
}

/// The request's volume: NIfTI bytes, or a zipped DICOM series (unpacked into scratch, at most what
/// `--max-voxels` of 4-byte pixels and their headers take). Refusals name the request body.
fn read_body(p: &Predictor, scratch: &Path, job: &Job) -> Result<(Volume, Option<SeriesReference>)> {
    let rename = |e: Error| match e {
        Error::Volume { kind, .. } => Error::volume("request body", kind),
        Error::Io { source, .. } => Error::io("request body", source),
        Error::Dicom { reason, .. } => Error::dicom("request body", reason),
        other => other,
    };
    if !job.zipped {
        let input = scratch_name(scratch, "in.nii");
        std::fs::write(&input, &job.body).map_err(|e| Error::io(&input, e))?;
        let vol = read_volume(&input, p.read_options());
        let _ = std::fs::remove_file(&input);
        return vol.map(|v| (v, None)).map_err(rename);
    }
    let dir = scratch_name(scratch, "series");
    let limit = p.read_options().max_voxels.saturating_mul(4).saturating_add(64 << 20);
    let read = unzip(&job.body, &dir, limit).and_then(|()| {
        let found = crate::input::source::find(&dir)?;
        match found.sources.as_slice() {
            [one @ Source::Dicom(_)] => one.read(p.read_options()),
            [] => Err(Error::dicom(&dir, "the zip holds no DICOM image series")),
            many => Err(Error::dicom(&dir, format!("the zip holds {} series; send one per request", many.len()))),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    read.map_err(rename)
}

/// Unpacks a zip into `dir`: entries outside it (`../`) refused, at most `limit` bytes in all whatever
/// the entries' headers claim.
fn unzip(body: &[u8], dir: &Path, limit: u64) -> Result<()> {
    use std::io::Read;
    let bad = |why: String| Error::dicom("request body", why);
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(body)).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .enclosed_name()
            .ok_or_else(|| bad(format!("zip entry {:?} points outside the archive", entry.name())))?;
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut out = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let copied =
            std::io::copy(&mut (&mut entry).take(limit - total + 1), &mut out).map_err(|e| Error::io(&path, e))?;
        total += copied;
        if total > limit {
            return Err(bad(format!("the zip unpacks to more than {limit} bytes")));
        }
    }
    Ok(())
}

/// The labels as the request asked: gzipped NIfTI, or a DICOM SEG of the posted series.
fn encode(
    p: &Predictor,
    scratch: &Path,
    labels: &ndarray::Array3<u8>,
    volume: &Volume,
    reference: Option<&SeriesReference>,
    output: OutputType,
) -> Result<(Vec<u8>, &'static str)> {
    let (out, content_type) = match output {
        OutputType::Nifti => (scratch_name(scratch, "out.nii.gz"), "application/gzip"),
        OutputType::DicomSeg => (scratch_name(scratch, "out.dcm"), "application/dicom"),
    };
    match (output, reference) {
        (OutputType::DicomSeg, Some(r)) => write_seg(&out, labels, r, &p.segments())?,
        (OutputType::DicomSeg, None) => return Err(Error::request("output", "dicom-seg needs a zipped DICOM series")),
        (OutputType::Nifti, _) => write_label_map(&out, labels, &volume.geometry, &p.bundle().manifest.input.labels)?,
    }
    let bytes = std::fs::read(&out).map_err(|e| Error::io(&out, e));
    let _ = std::fs::remove_file(&out);
    Ok((bytes?, content_type))
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", msg.into())).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Whether the body is declared a zip archive (`Content-Type: application/zip`).
fn is_zip(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/zip"))
}

fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    match &state.token {
        None => true,
        Some(t) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.strip_prefix("Bearer ").is_some_and(|g| g.trim() == t)),
    }
}

async fn submit(state: &AppState, task: Task, body: Bytes, zipped: bool) -> std::result::Result<Reply, Response> {
    if body.is_empty() {
        return Err(plain(
            StatusCode::BAD_REQUEST,
            "empty body: send a NIfTI volume (.nii or .nii.gz bytes) or a zipped DICOM series (Content-Type: application/zip)",
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.metrics.queued.fetch_add(1, Ordering::Relaxed);
    match state.jobs.try_send(Job { task, body, zipped, reply: tx }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            state.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: every worker is running and the queue is full; retry shortly",
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            state.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
        }
    }
    match tokio::time::timeout(state.timeout, rx).await {
        Err(_) => Err(plain(StatusCode::GATEWAY_TIMEOUT, format!("no result within {} s", state.timeout.as_secs()))),
        Ok(Err(_)) => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, "worker stopped")),
        Ok(Ok(Err(e))) => {
            let status =
                if e.is_caller_fault() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::INTERNAL_SERVER_ERROR };
            Err(plain(status, e.to_string()))
        }
        Ok(Ok(Ok(r))) => Ok(r),
    }
}

async fn segment(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let r = segment_inner(&state, &headers, &q, body).await;
    state.metrics.count("/v1/segment", r.status());
    r
}

/// The path a request asks for: `?path=` (or `x-autopath-path`), with `threshold`, `budget` or
/// `time_budget`; the reason when it cannot be had.
fn request_choice(
    state: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> std::result::Result<PathChoice, String> {
    let path = q
        .get("path")
        .map(String::as_str)
        .or_else(|| headers.get("x-autopath-path").and_then(|v| v.to_str().ok()))
        .unwrap_or("auto");
    let number = |key: &str| q.get(key).map(|v| v.parse::<f64>().map_err(|e| format!("{key} {v:?}: {e}"))).transpose();
    let threshold = number("threshold")?.map(|t| t as f32);
    let budget =
        crate::deploy::Budget::from_options(number("budget")?, number("time_budget")?).map_err(|e| e.to_string())?;
    let choice = path.parse::<PathChoice>()?;
    PathChoice::resolve(choice, threshold, budget, state.policy.as_ref()).map_err(|e| e.to_string())
}

async fn segment_inner(state: &AppState, headers: &HeaderMap, q: &HashMap<String, String>, body: Bytes) -> Response {
    if !authorised(state, headers) {
        return plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let choice = match request_choice(state, headers, q) {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let zipped = is_zip(headers);
    let output = match q.get("output").map(|o| o.parse::<OutputType>()).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("output: {e}")),
    };
    if output == OutputType::DicomSeg && !zipped {
        return plain(
            StatusCode::BAD_REQUEST,
            "output=dicom-seg references the source images: send a zipped DICOM series (Content-Type: application/zip)",
        );
    }
    let t = Instant::now();
    match submit(state, Task::Segment(choice, output), body, zipped).await {
        Err(r) => r,
        Ok(Reply::Segmentation { bytes, content_type, keep, kept, flop_fraction, times, audit }) => {
            if let Some(a) = &audit {
                state.metrics.audited(a);
            }
            state.metrics.observe("total", t.elapsed().as_secs_f64());
            for (s, v) in STAGES.iter().zip([
                times.read,
                times.preprocess,
                times.policy,
                times.network,
                times.stitch,
                times.write,
            ]) {
                state.metrics.observe(s, v);
            }
            let mut r = (StatusCode::OK, bytes).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            let json = serde_json::json!({"keep": keep, "blocks_kept": kept, "flop_fraction": flop_fraction,
                "seconds": times, "audit": audit})
            .to_string();
            if let Some(a) = &audit {
                let answered = if a.answered_full { "full" } else { "path" };
                h.insert("x-autopath-answered", HeaderValue::from_static(answered));
                if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", a.agreement)) {
                    h.insert("x-autopath-audit-agreement", v);
                }
            }
            for (k, v) in [
                ("x-autopath-keep", keep.clone()),
                ("x-autopath-blocks-kept", kept.to_string()),
                ("x-autopath-flop-fraction", format!("{flop_fraction:.4}")),
                ("x-autopath-report", json),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            r
        }
        Ok(Reply::Policy { .. }) => plain(StatusCode::INTERNAL_SERVER_ERROR, "unexpected reply"),
    }
}

async fn policy(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = if !authorised(&state, &headers) {
        plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
    } else {
        match submit(&state, Task::Policy, body, is_zip(&headers)).await {
            Err(r) => r,
            Ok(Reply::Policy { keep, probabilities }) => {
                axum::Json(serde_json::json!({"keep": keep, "probabilities": probabilities})).into_response()
            }
            Ok(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "unexpected reply"),
        }
    };
    state.metrics.count("/v1/policy", r.status());
    r
}

/// Host threads taking requests from the shared queue until it closes; the predictor's network
/// threads run their tiles.
fn spawn_host_threads(
    threads: usize,
    predictor: &Arc<Predictor>,
    rx: Arc<Mutex<Receiver<Job>>>,
    metrics: &Arc<Metrics>,
    scratch: &Path,
) {
    for i in 0..threads.max(1) {
        let (rx, m, scratch, p) = (rx.clone(), metrics.clone(), scratch.to_path_buf(), predictor.clone());
        let host = move || loop {
            let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(j) => j,
                Err(_) => break,
            };
            m.queued.fetch_sub(1, Ordering::Relaxed);
            m.in_flight.fetch_add(1, Ordering::Relaxed);
            let r = work(&p, &scratch, &job, &m);
            m.in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = job.reply.send(r);
        };
        std::thread::Builder::new().name(format!("autopath-host-{i}")).spawn(host).expect("spawning a host thread");
    }
}

/// The HTTP API: health and readiness (open), the manifest and metrics (token-guarded), segment and
/// policy.
fn routes(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|State(s): State<Arc<AppState>>| async move { s.ready.clone() }))
        .route(
            "/v1/bundle",
            get(|State(s): State<Arc<AppState>>, h: HeaderMap| async move {
                if !authorised(&s, &h) {
                    return plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                }
                ([(header::CONTENT_TYPE, "application/json")], s.manifest.clone()).into_response()
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState>>, h: HeaderMap| async move {
                if !authorised(&s, &h) {
                    return plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                }
                let text = s.metrics.render() + &s.metrics.render_audit() + &network_metrics(&s.predictor);
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
            }),
        )
        .route("/v1/segment", post(segment))
        .route("/v1/policy", post(policy))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// SIGTERM or Ctrl-C: stop accepting; requests in flight finish.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// The network threads' counters and providers in Prometheus text.
fn network_metrics(p: &Predictor) -> String {
    let st = p.network_stats();
    let mut s = String::from(
        "# HELP autopath_execution_provider The provider each network thread's sessions run on (after any fallback).\n# TYPE autopath_execution_provider gauge\n",
    );
    for (i, ep) in p.providers().iter().enumerate() {
        s += &format!("autopath_execution_provider{{worker=\"{i}\",provider=\"{}\"}} 1\n", ep.name());
    }
    for (name, help, v) in [
        ("autopath_network_calls_total", "Network calls (policy included).", st.calls.load(Ordering::Relaxed)),
        ("autopath_network_tiles_total", "Tiles run.", st.tiles.load(Ordering::Relaxed)),
        (
            "autopath_network_shared_calls_total",
            "Calls that carried more than one request's tiles.",
            st.shared_calls.load(Ordering::Relaxed),
        ),
    ] {
        s += &format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
    }
    let busy = st.busy_us.load(Ordering::Relaxed) as f64 / 1e6;
    s += &format!("# HELP autopath_network_busy_seconds_total Seconds the network threads spent in calls.\n# TYPE autopath_network_busy_seconds_total counter\nautopath_network_busy_seconds_total {busy}\n");
    s
}

/// The manifest as `/v1/bundle` gives it, with a `runtime` section saying how this service runs it.
fn bundle_document(p: &Predictor, opts: &ServeOptions) -> Result<String> {
    let mut doc = serde_json::to_value(&p.bundle().manifest).map_err(|e| Error::invalid("manifest", e.to_string()))?;
    let providers: Vec<&str> = p.providers().iter().map(|&e| e.name()).collect();
    doc["runtime"] = serde_json::json!({
        "execution_providers": providers,
        "network_threads": providers.len(),
        "host_threads": opts.host_threads.max(1),
        "tile_batch": opts.tile_batch,
        "share_tiles": opts.share_tiles,
        "joined_paths": opts.session.joined_paths,
        "cuda_graph": opts.session.cuda_graph,
    });
    serde_json::to_string_pretty(&doc).map_err(|e| Error::invalid("manifest", e.to_string()))
}

/// Serves until SIGTERM or Ctrl-C; `ready` receives the bound address once listening.
pub async fn serve(opts: ServeOptions, ready: impl FnOnce(std::net::SocketAddr)) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("autopath-serve-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let (tx, rx) = sync_channel::<Job>(opts.queue);
    let rx = Arc::new(Mutex::new(rx));
    let share_tiles = opts.share_tiles.max(opts.tile_batch);
    let mut session = opts.session.clone();
    session.max_tile_batch = session.max_tile_batch.max(share_tiles);
    let popts = PredictorOptions {
        session,
        tile_batch: opts.tile_batch,
        network_threads: opts.workers.max(1),
        batching: Batching {
            max_tiles: if share_tiles > opts.tile_batch { share_tiles } else { 0 },
            wait: opts.share_wait,
        },
        audit: opts.audit,
        guard: opts.guard,
        ..Default::default()
    };
    let predictor = Arc::new(Predictor::from_bundle(&opts.bundle, &popts)?);
    let manifest = bundle_document(&predictor, &opts)?;
    let providers: Vec<String> =
        predictor.providers().iter().enumerate().map(|(i, &e)| format!("worker {i}: {}", e.name())).collect();
    let ready_line = format!("ready: bundle loaded, sessions open ({})\n", providers.join(", "));
    let blocks = predictor.num_blocks();
    let policy_entry = predictor.bundle().manifest.policy.clone();
    let metrics = Arc::new(Metrics {
        kept: (0..blocks).map(|_| AtomicU64::new(0)).collect(),
        dropped: (0..blocks).map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    spawn_host_threads(opts.host_threads, &predictor, rx, &metrics, &scratch);
    let state = Arc::new(AppState {
        jobs: tx,
        manifest,
        ready: ready_line,
        predictor,
        policy: policy_entry,
        metrics: metrics.clone(),
        token: opts.token.clone(),
        timeout: opts.timeout,
    });
    let app = routes(state.clone(), opts.max_body);
    let listener = tokio::net::TcpListener::bind(&opts.addr)
        .await
        .map_err(|e| Error::invalid("--addr", format!("{}: {e}", opts.addr)))?;
    ready(listener.local_addr().map_err(|e| Error::invalid("--addr", e.to_string()))?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::invalid("server", e.to_string()))?;
    drop(state);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
