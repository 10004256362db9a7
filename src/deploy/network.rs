//! The network stage as a service to host threads. Threads that each own a session set take tile
//! batches and policy inputs from one queue, oldest volume first, and answer each on its own channel;
//! the host threads read, preprocess, blend and write meanwhile. With batching on, tile batches of
//! concurrent volumes on the same path share one network call.
//!
//! Why a queue and not a lock around the sessions: ONNX Runtime's sessions need `&mut` to run, and a
//! volume spends most of its wall time outside them (decoding, blending, encoding). With the network in
//! threads of its own, volume i+1 is decoded while volume i is in the network, and a volume's next
//! tile batch runs while its previous one is blended.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ndarray::{Array2, Array5, Axis};

use super::session::{ExecutionProvider, Sessions};
use crate::error::{Error, Result};

/// Which graphs a tile batch runs through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// A keep mask, through the fewest sessions: `full.onnx` when every block is kept, the bundle's
    /// whole-path graph when it has one, else one joined from the segment graphs (unless
    /// `--joined-paths 0`), else the chain of block graphs.
    Chain(Vec<bool>),
    /// A keep mask through the chain of block graphs, whatever else the bundle has (the benchmark's
    /// measure of the chain).
    Blocks(Vec<bool>),
    /// The monolithic `full.onnx`.
    Full,
}

/// When tile batches of different volumes share a network call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batching {
    /// Most tiles in one call; batches of other volumes on the same route join a call while it has room.
    /// 0: never join (every call is one volume's batch, as in a sequential run).
    pub max_tiles: usize,
    /// How long a call with room waits for the batches of volumes that are active but have not
    /// submitted yet (still decoding, or blending their previous batch).
    pub wait: Duration,
}

/// Counters of the network threads, for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct NetworkStats {
    /// Network calls (policy calls included).
    pub calls: AtomicU64,
    /// Tiles run.
    pub tiles: AtomicU64,
    /// Calls that carried the tiles of more than one volume.
    pub shared_calls: AtomicU64,
    /// Microseconds spent in network calls.
    pub busy_us: AtomicU64,
}

/// The probabilities `[B, K, d, h, w]` of one submitted tile batch and the seconds its call took.
pub struct TileOutput {
    /// Class probabilities, in the batch's tile order.
    pub probabilities: Array5<f32>,
    /// Seconds of the network call (shared calls: the whole call).
    pub seconds: f64,
}

enum Work {
    Tiles { route: Route, tiles: Array5<f32>, reply: Sender<Result<TileOutput>> },
    Policy { input: Array5<f32>, reply: Sender<Result<(Array2<f32>, f64)>> },
}

struct Job {
    /// The submitting stream: lower is older and runs first.
    stream: u64,
    work: Work,
}

impl Job {
    fn tiles(&self) -> usize {
        match &self.work {
            Work::Tiles { tiles, .. } => tiles.len_of(Axis(0)),
            Work::Policy { .. } => 1,
        }
    }

    fn route(&self) -> Option<&Route> {
        match &self.work {
            Work::Tiles { route, .. } => Some(route),
            Work::Policy { .. } => None,
        }
    }
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    /// Streams open now (volumes between their start and their last network answer).
    streams: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    batching: Batching,
    stats: NetworkStats,
    next_stream: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Session sets in threads of their own, fed from one queue. Dropping it lets the threads finish the
/// queued work and joins them.
pub struct Network {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    providers: Vec<ExecutionProvider>,
}

impl Network {
    /// Starts one thread per session set.
    pub fn start(session_sets: Vec<Sessions>, batching: Batching) -> Network {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            batching,
            stats: NetworkStats::default(),
            next_stream: AtomicU64::new(0),
        });
        let providers = session_sets.iter().map(|s| s.options.ep).collect();
        let threads = session_sets
            .into_iter()
            .enumerate()
            .map(|(i, mut sessions)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("autopath-network-{i}"))
                    .spawn(move || {
                        while let Some(batch) = next_call(&shared) {
                            let run = || execute(&mut sessions, batch, &shared.stats);
                            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                                // Its sessions may be broken: stop taking work, and answer what is
                                // queued with an error (dropping a reply wakes its waiter) rather
                                // than leave it waiting for ever.
                                let mut st = shared.lock();
                                st.closed = true;
                                st.jobs.clear();
                                drop(st);
                                shared.changed.notify_all();
                                break;
                            }
                        }
                    })
                    .expect("spawning a network thread")
            })
            .collect();
        Network { shared, threads, providers }
    }

    /// The provider each session set actually runs on (after any fallback), by network thread.
    pub fn providers(&self) -> &[ExecutionProvider] {
        &self.providers
    }

    /// The counters of the network threads.
    pub fn stats(&self) -> &NetworkStats {
        &self.shared.stats
    }

    /// Opens a stream: one volume's network work, older than every stream opened after it. While it is
    /// open, batching counts on its tiles.
    pub fn stream(&self) -> Stream<'_> {
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        self.shared.lock().streams += 1;
        Stream { shared: &self.shared, id }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One volume's access to the network: submits its work and waits for the answers.
pub struct Stream<'n> {
    shared: &'n Shared,
    id: u64,
}

/// The answer to a submitted tile batch, to wait for.
pub struct Ticket(Receiver<Result<TileOutput>>);

impl Ticket {
    /// Waits for the batch's probabilities.
    pub fn wait(self) -> Result<TileOutput> {
        self.0.recv().map_err(|_| Error::OnnxRuntime("the network thread stopped".into()))?
    }
}

impl Stream<'_> {
    fn push(&self, work: Work) -> Result<()> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err(Error::OnnxRuntime("the network threads have stopped".into()));
        }
        st.jobs.push(Job { stream: self.id, work });
        drop(st);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Queues a tile batch `[B, 1, d, h, w]` on `route`; the answer comes through the ticket.
    pub fn submit(&self, route: &Route, tiles: Array5<f32>) -> Result<Ticket> {
        let (reply, answer) = channel();
        self.push(Work::Tiles { route: route.clone(), tiles, reply })?;
        Ok(Ticket(answer))
    }

    /// Keep probabilities `[B, N]` for policy inputs `[B, 1, d, h, w]`, and the seconds of the call.
    pub fn policy(&self, input: Array5<f32>) -> Result<(Array2<f32>, f64)> {
        let (reply, answer) = channel();
        self.push(Work::Policy { input, reply })?;
        answer.recv().map_err(|_| Error::OnnxRuntime("the network thread stopped".into()))?
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        self.shared.lock().streams -= 1;
        self.shared.changed.notify_all();
    }
}

/// The next call's jobs: the oldest stream's first job, joined (with batching on) by other streams'
/// tile batches on the same route while they fit. Waits while the queue is empty; None once closed
/// and drained.
fn next_call(shared: &Shared) -> Option<Vec<Job>> {
    let mut st = shared.lock();
    loop {
        if let Some(i) = (0..st.jobs.len()).min_by_key(|&i| st.jobs[i].stream) {
            let first = st.jobs.remove(i);
            let joinable = shared.batching.max_tiles > first.tiles() && first.route().is_some();
            let mut call = vec![first];
            if joinable {
                drop(join_same_route(shared, st, &mut call));
            }
            return Some(call);
        }
        if st.closed {
            return None;
        }
        st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
    }
}

/// Adds queued tile batches on the call's route, oldest first, while they fit; waits up to the
/// batching window while the call has room and streams that are open have not submitted.
fn join_same_route<'a>(
    shared: &'a Shared,
    mut st: MutexGuard<'a, State>,
    call: &mut Vec<Job>,
) -> MutexGuard<'a, State> {
    let Batching { max_tiles, wait } = shared.batching;
    let route = call[0].route().cloned();
    let deadline = Instant::now() + wait;
    loop {
        let mut tiles: usize = call.iter().map(Job::tiles).sum();
        let mut order: Vec<usize> = (0..st.jobs.len()).collect();
        order.sort_by_key(|&i| st.jobs[i].stream);
        let mut taken = Vec::new();
        for i in order {
            let j = &st.jobs[i];
            if j.route() == route.as_ref() && tiles + j.tiles() <= max_tiles {
                tiles += j.tiles();
                taken.push(i);
            }
        }
        taken.sort_unstable_by(|a, b| b.cmp(a));
        for i in taken {
            call.push(st.jobs.remove(i));
        }
        call.sort_by_key(|j| j.stream);
        let streams_in_call = call.iter().map(|j| j.stream).collect::<HashSet<_>>().len();
        let now = Instant::now();
        if tiles >= max_tiles || st.streams <= streams_in_call || now >= deadline {
            return st;
        }
        st = shared.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// Runs one call and answers every job in it.
fn execute(sessions: &mut Sessions, call: Vec<Job>, stats: &NetworkStats) {
    let t = Instant::now();
    stats.calls.fetch_add(1, Ordering::Relaxed);
    if call.len() > 1 {
        stats.shared_calls.fetch_add(1, Ordering::Relaxed);
    }
    let mut call = call;
    if call.len() == 1 {
        match call.remove(0).work {
            Work::Policy { input, reply } => {
                let r = sessions.run_policy(input.view());
                let _ = reply.send(r.map(|p| (p, t.elapsed().as_secs_f64())));
            }
            Work::Tiles { route, tiles, reply } => {
                stats.tiles.fetch_add(tiles.len_of(Axis(0)) as u64, Ordering::Relaxed);
                let r = run_tiles(sessions, &route, tiles.view());
                let _ =
                    reply.send(r.map(|probabilities| TileOutput { probabilities, seconds: t.elapsed().as_secs_f64() }));
            }
        }
    } else {
        run_shared(sessions, call, stats, t);
    }
    stats.busy_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
}

fn run_tiles(sessions: &mut Sessions, route: &Route, tiles: ndarray::ArrayView5<f32>) -> Result<Array5<f32>> {
    match route {
        Route::Chain(keep) => sessions.run_path_with(tiles, keep, |a| a.to_owned()),
        Route::Blocks(keep) => sessions.run_chain(tiles, keep),
        Route::Full => sessions.run_full(tiles),
    }
}

/// Several volumes' tile batches (one route) as one call: concatenated, run, split back.
fn run_shared(sessions: &mut Sessions, call: Vec<Job>, stats: &NetworkStats, t: Instant) {
    let mut parts = Vec::with_capacity(call.len());
    let mut route = Route::Full;
    for job in call {
        if let Work::Tiles { route: r, tiles, reply } = job.work {
            route = r;
            parts.push((tiles, reply));
        }
    }
    let views: Vec<_> = parts.iter().map(|(t, _)| t.view()).collect();
    let joined = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::invalid("tile batch", e.to_string()));
    let out = joined.and_then(|j| {
        stats.tiles.fetch_add(j.len_of(Axis(0)) as u64, Ordering::Relaxed);
        run_tiles(sessions, &route, j.view())
    });
    let seconds = t.elapsed().as_secs_f64();
    let mut start = 0;
    for (tiles, reply) in parts {
        let n = tiles.len_of(Axis(0));
        let answer = match &out {
            Ok(p) => {
                Ok(TileOutput { probabilities: p.slice_axis(Axis(0), (start..start + n).into()).to_owned(), seconds })
            }
            Err(e) => Err(Error::OnnxRuntime(e.to_string())),
        };
        start += n;
        let _ = reply.send(answer);
    }
}
