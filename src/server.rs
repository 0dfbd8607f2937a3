//! Listeners: the TLS accept loop, per-connection serving with a deadline on
//! every phase (handshake, first request, idle, a client that stops reading,
//! connection age), the plain-HTTP redirect and the admin listener, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::body::{BufferPool, ConnBuffers};
use crate::client_slots::ClientSlots;
use crate::config::RuntimeMode;
use crate::error::{ClientError, ProxyError};
use crate::listener::Listeners;
use crate::metrics::CloseReason;
use crate::state::Shared;

/// Builds the connection server for the protocol ALPN chose: `h2` is served
/// as HTTP/2 only and `http/1.1` as HTTP/1.1 only (RFC 7301: the server
/// speaks what it agreed to); without ALPN the first bytes decide.
fn http_builder(
    header_read_timeout: Duration,
    alpn: Option<&[u8]>,
) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // Hyper's own caps sit above ours so that our limit answers first,
        // with a JSON 431 instead of a bare one.
        .max_buf_size(256 * 1024)
        .max_headers(256);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(256 * 1024)
        // What h2 buffers per stream beyond the peer's window; the rest of a
        // buffered answer stays in our body, counted against the budget.
        .max_send_buf_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    match alpn {
        Some(b"h2") => b.http2_only(),
        Some(b"http/1.1") => b.http1_only(),
        _ => b,
    }
}

/// What the server tells its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown began: finish what is in flight, take nothing new.
    Draining,
    /// The grace period is over: close now.
    Closing,
}

/// One connection's deadlines, read from the config when it is accepted.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    handshake: Duration,
    /// From the end of the handshake to the first complete request head:
    /// protocol detection, the HTTP/2 preface and SETTINGS included.
    first_request: Duration,
    idle: Duration,
    send: Duration,
    max_age: Duration,
    drain: Duration,
}

impl Deadlines {
    fn from_config(c: &crate::config::Config) -> Deadlines {
        Deadlines {
            handshake: c.tls.handshake_timeout,
            first_request: c.limits.header_read_timeout,
            idle: c.limits.idle_timeout,
            send: c.limits.send_timeout,
            max_age: c.limits.max_connection_age,
            drain: c.limits.connection_drain_timeout,
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish within the grace period.
pub async fn serve(shared: Arc<Shared>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    // The redirect listener stops with the HTTPS one; the admin listener
    // stays up while connections drain so /readyz can say "draining".
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Redirects name the port the HTTPS listener really has: the config may
    // say port 0 when the caller binds the listener itself.
    let https_port = listeners.https.local_addr().ok().map(|a| a.port());
    if let Some(l) = listeners.redirect {
        tasks.push(tokio::spawn(serve_redirect(
            Arc::clone(&shared),
            l,
            https_port,
            stop_rx.clone(),
        )));
    }
    if let Some(l) = listeners.admin {
        tasks.push(tokio::spawn(crate::admin::serve(
            Arc::clone(&shared),
            l,
            admin_stop_rx,
        )));
    }
    shared.runtime.load().start_checks();
    let pruner = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                shared.runtime.load().limits.prune_all();
            }
        })
    };

    // Every connection task holds a receiver: their number is the number of
    // open connections, handshakes included, on all runtimes together.
    let (phase_tx, _) = watch::channel(Phase::Serving);
    let front = Front {
        shared: Arc::clone(&shared),
        phase: Arc::new(phase_tx),
        pool: Arc::new(BufferPool::new(shared.metrics.buffered_bytes.clone())),
        client_slots: Arc::new(ClientSlots::default()),
    };
    let (accept_stop_tx, accept_stop_rx) = watch::channel(false);
    let server = shared.runtime.load().config.server.clone();
    let workers = match server.runtime {
        RuntimeMode::Shared => None,
        RuntimeMode::PerCore => Some(server.worker_count()),
    };
    let mut serving = start_accepting(&front, listeners.https, workers, &accept_stop_rx);
    shutdown.await;
    let _ = accept_stop_tx.send(true);
    // Every accept loop has closed its socket once this returns.
    serving.accepting_stopped().await;
    let phase_tx = &front.phase;
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let grace = shared.runtime.load().config.shutdown_grace;
    tracing::info!(
        in_flight = phase_tx.receiver_count(),
        grace_secs = grace.as_secs_f64(),
        "shutting down: draining connections"
    );
    let _ = stop_tx.send(true);
    phase_tx.send_replace(Phase::Draining);
    match tokio::time::timeout(grace, phase_tx.closed()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => {
            tracing::warn!("grace period over; closing remaining connections");
            phase_tx.send_replace(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(5), phase_tx.closed()).await;
        }
    }
    serving.finish().await;
    pruner.abort();
    shared.runtime.load().stop_checks();
    let _ = admin_stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
}

/// What every accept loop shares, whichever runtime it runs on: the
/// process state, the connections' phase (its receiver count is the number
/// of open connections of all runtimes), the buffer budget and the
/// per-client connection counts.
#[derive(Clone)]
struct Front {
    shared: Arc<Shared>,
    phase: Arc<watch::Sender<Phase>>,
    pool: Arc<BufferPool>,
    client_slots: Arc<ClientSlots>,
}

/// The accept loops while they run: one task on the caller's runtime
/// (`shared`), or one thread per runtime (`per_core`).
enum Serving {
    Task(tokio::task::JoinHandle<()>),
    PerCore(Vec<Worker>),
}

/// A serving runtime on its own thread.
struct Worker {
    /// Sent when its accept loop has returned (its socket is closed).
    accepting: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Tells it to stop its runtime (after the drain).
    finish: Option<tokio::sync::oneshot::Sender<()>>,
    /// Sent when its runtime is shut down.
    exited: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Serving {
    async fn accepting_stopped(&mut self) {
        match self {
            Serving::Task(t) => {
                let _ = t.await;
            }
            Serving::PerCore(workers) => {
                for w in workers {
                    if let Some(rx) = w.accepting.take() {
                        let _ = rx.await;
                    }
                }
            }
        }
    }

    /// After the drain: stops the runtimes (dropping what still runs on
    /// them) and waits for their threads.
    async fn finish(self) {
        let Serving::PerCore(workers) = self else {
            return;
        };
        for mut w in workers {
            if let Some(tx) = w.finish.take() {
                let _ = tx.send(());
            }
            // The runtime's own shutdown is bounded (`shutdown_timeout`).
            let _ = w.exited.await;
            let _ = w.thread.join();
        }
    }
}

/// How long a serving runtime's shutdown waits for its blocking tasks (an
/// offloaded transform of a connection that was just dropped).
const WORKER_SHUTDOWN: Duration = Duration::from_secs(5);

/// tokio's default bound on blocking threads, for the whole process: the
/// per-core runtimes share it out rather than each having all of it.
const BLOCKING_THREADS: usize = 512;

/// Starts the accept loops: `workers` None serves on the caller's runtime;
/// Some(n) starts n single-threaded runtimes, each on its own thread with
/// its own socket on the listen address. If the runtimes can't be made,
/// the caller's runtime serves (logged).
fn start_accepting(
    front: &Front,
    https: TcpListener,
    workers: Option<usize>,
    stop: &watch::Receiver<bool>,
) -> Serving {
    let Some(n) = workers else {
        return Serving::Task(tokio::spawn(accept_loop(
            front.clone(),
            https,
            0,
            stop.clone(),
        )));
    };
    let first = match https.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot hand the listen socket to the serving runtimes");
            return Serving::PerCore(Vec::new());
        }
    };
    match start_workers(front, first, n, stop) {
        Ok(workers) => Serving::PerCore(workers),
        Err((first, e)) => {
            tracing::error!(error = %e, "cannot start the per-core runtimes; serving on one shared runtime");
            match TcpListener::from_std(first) {
                Ok(l) => {
                    Serving::Task(tokio::spawn(accept_loop(front.clone(), l, 0, stop.clone())))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve the listen socket");
                    Serving::PerCore(Vec::new())
                }
            }
        }
    }
}

type StartError = (std::net::TcpListener, std::io::Error);

fn start_workers(
    front: &Front,
    first: std::net::TcpListener,
    n: usize,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<Worker>, StartError> {
    let n = n.max(1);
    // Sockets and runtimes are all made before any thread starts, so a
    // failure leaves nothing half-started.
    let mut sockets = Vec::with_capacity(n);
    for _ in 1..n {
        match crate::listener::sibling(&first) {
            Ok(l) => sockets.push(l),
            Err(e) => return Err((first, e)),
        }
    }
    let mut runtimes = Vec::with_capacity(n);
    for i in 0..n {
        let built = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("fieldseal-blocking-{i}"))
            .max_blocking_threads((BLOCKING_THREADS / n).max(4))
            .build();
        match built {
            Ok(rt) => runtimes.push(rt),
            Err(e) => return Err((first, e)),
        }
    }
    sockets.insert(0, first);
    let mut workers = Vec::with_capacity(n);
    for (i, (socket, rt)) in sockets.into_iter().zip(runtimes).enumerate() {
        let (accepting_tx, accepting) = tokio::sync::oneshot::channel();
        let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let (exited_tx, exited) = tokio::sync::oneshot::channel();
        let front = front.clone();
        let stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fieldseal-{i}"))
            .spawn(move || {
                crate::upstream::set_runtime_index(i);
                rt.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(l) => accept_loop(front, l, i, stop).await,
                        Err(e) => tracing::error!(runtime = i, error = %e, "cannot serve the listen socket"),
                    }
                    let _ = accepting_tx.send(());
                    // Its connections drain here, on this runtime.
                    let _ = finish_rx.await;
                });
                rt.shutdown_timeout(WORKER_SHUTDOWN);
                let _ = exited_tx.send(());
            });
        match spawned {
            Ok(thread) => workers.push(Worker {
                accepting: Some(accepting),
                finish: Some(finish),
                exited,
                thread,
            }),
            Err(e) => {
                // The threads already started stop with the server.
                tracing::error!(runtime = i, error = %e, "cannot start a serving thread");
            }
        }
    }
    Ok(workers)
}

/// Accepts connections on `https` until `stop` says so, each served on
/// this runtime; `runtime` names it in metrics.
async fn accept_loop(
    front: Front,
    https: TcpListener,
    runtime: usize,
    mut stop: watch::Receiver<bool>,
) {
    let Front {
        shared,
        phase: phase_tx,
        pool,
        client_slots,
    } = front;
    let open_here = shared
        .metrics
        .runtime_connections
        .get_or_create(&crate::metrics::RuntimeLabel {
            runtime: runtime.to_string(),
        })
        .clone();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = https.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let rt = shared.runtime.load();
                if phase_tx.receiver_count() >= rt.config.limits.max_connections {
                    tracing::warn!(%peer, "connection limit reached; closing new connection");
                    continue;
                }
                let slot = if rt.config.is_trusted_proxy(peer.ip()) {
                    None
                } else {
                    let cap = rt.config.limits.max_connections_per_client;
                    let Some(slot) = client_slots.take(peer.ip(), cap) else {
                        closed(&shared.metrics, "client_connection_limit");
                        tracing::debug!(%peer, "client connection limit reached; closing new connection");
                        continue;
                    };
                    Some(slot)
                };
                let _ = tcp.set_nodelay(true);
                let conn = Accepted {
                    shared: Arc::clone(&shared),
                    peer,
                    acceptor: TlsAcceptor::from(Arc::clone(&rt.tls)),
                    deadlines: Deadlines::from_config(&rt.config),
                    pool: Arc::clone(&pool),
                    phase: phase_tx.subscribe(),
                };
                drop(rt);
                let open = OpenHere::new(open_here.clone());
                tokio::spawn(async move {
                    // Held until the connection is closed.
                    let _slot = slot;
                    let _open = open;
                    conn.run(tcp).await;
                });
            }
        }
    }
}

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// One connection counted in its runtime's gauge until it is dropped.
struct OpenHere(prometheus_client::metrics::gauge::Gauge);

impl OpenHere {
    fn new(g: prometheus_client::metrics::gauge::Gauge) -> OpenHere {
        g.inc();
        OpenHere(g)
    }
}

impl Drop for OpenHere {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A TCP connection on the HTTPS port, before its handshake.
struct Accepted {
    shared: Arc<Shared>,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    deadlines: Deadlines,
    pool: Arc<BufferPool>,
    phase: watch::Receiver<Phase>,
}

impl Accepted {
    async fn run(self, tcp: TcpStream) {
        let peer = self.peer;
        let metrics = &self.shared.metrics;
        // One deadline for the first byte and the whole handshake: a client
        // that sends nothing, or stops inside its hello, is dropped with it.
        let deadline = after(Instant::now(), self.deadlines.handshake);
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(1..)) if first[0].is_ascii_uppercase() => {
                // A request line (`GET / HTTP/1.1`), not a TLS record (0x16).
                closed(metrics, "plain_http");
                let headers = self.shared.runtime.load().config.default_headers.clone();
                answer_plain_http(tcp, deadline, &headers).await;
                return;
            }
            Ok(Ok(1..)) => {}
            Ok(Ok(_) | Err(_)) => return,
            Err(_) => {
                metrics.tls_handshake_failures.inc();
                closed(metrics, "handshake_timeout");
                tracing::debug!(%peer, "no TLS handshake before the deadline");
                return;
            }
        }
        // A second handle on the socket, kept for the lingering close: hyper
        // and the TLS stream own the first and drop it when the connection
        // ends. Without it the connection is served as before, unlingered.
        let raw = {
            use std::os::fd::AsFd;
            tcp.as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from)
        };
        let tls = match tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                metrics.tls_handshake_failures.inc();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failures.inc();
                closed(metrics, "handshake_timeout");
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        serve_connection(self, tls, raw).await;
    }
}

fn closed(metrics: &crate::metrics::Metrics, reason: &'static str) {
    metrics
        .connections_closed
        .get_or_create(&CloseReason { reason })
        .inc();
}

/// nginx's answer to plain HTTP on a TLS port, in our JSON: a 400, then
/// close. The request head is read first (bounded) so that closing with
/// unread bytes doesn't reset the connection before the client reads it.
async fn answer_plain_http(
    mut tcp: TcpStream,
    deadline: Instant,
    security: &crate::headers::SecurityHeaders,
) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let err = ProxyError::from(ClientError::BadRequest(
        "plain HTTP request sent to the HTTPS port",
    ));
    let body = err.body();
    let mut headers = http::HeaderMap::new();
    security.apply(&mut headers);
    let mut out = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    let written = tokio::time::timeout_at(deadline, async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        // Let the client read the answer: wait (briefly) for its close.
        let linger = deadline.min(Instant::now() + Duration::from_secs(1));
        while let Ok(Ok(1..)) = tokio::time::timeout_at(linger, tcp.read(&mut buf)).await {}
    }
}

/// Marks a response's hand-out time: `NOT_WAITING` while the proxy itself
/// is busy (reading, waiting for the upstream), else the millisecond (since
/// the connection began) at which the body last handed a frame to hyper
/// without being asked for the next one.
const NOT_WAITING: u64 = u64::MAX;

/// What the connection's supervisor knows about its requests.
struct ConnState {
    started: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    last_active_ms: AtomicU64,
    /// Hand-out marks, one per request in flight, reused: as many as the
    /// connection ever had in flight at once.
    marks: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    all: Vec<Arc<AtomicU64>>,
    free: Vec<Arc<AtomicU64>>,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            marks: Mutex::new(Marks::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// A request arrived: counted until its response body is done.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut marks = lock(&self.marks);
        let mark = marks.free.pop().unwrap_or_else(|| {
            let m = Arc::new(AtomicU64::new(NOT_WAITING));
            marks.all.push(Arc::clone(&m));
            m
        });
        drop(marks);
        InFlight {
            state: Arc::clone(self),
            mark,
        }
    }

    /// The oldest hand-out among the responses in flight.
    fn oldest_waiting_ms(&self) -> Option<u64> {
        lock(&self.marks)
            .all
            .iter()
            .map(|m| m.load(Ordering::Acquire))
            .filter(|&v| v != NOT_WAITING)
            .min()
    }
}

/// One request in flight on a connection.
struct InFlight {
    state: Arc<ConnState>,
    mark: Arc<AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.mark.store(NOT_WAITING, Ordering::Release);
        lock(&self.state.marks).free.push(Arc::clone(&self.mark));
        self.state
            .last_active_ms
            .store(self.state.now_ms(), Ordering::Release);
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain bookkeeping: still usable after a panic elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pin_project_lite::pin_project! {
    /// A response body that tells the supervisor when the client stops
    /// taking it. hyper asks for the next frame only once the previous one
    /// could be written (HTTP/1.1: buffer flushed; HTTP/2: window open), so
    /// a frame handed out and not followed by a new poll is a client that
    /// does not read. The body can't act on that itself (it is not polled),
    /// so the supervisor closes the connection, which drops the body and
    /// with it the upstream connection it streams from.
    struct Watched<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B> Watched<B> {
    fn new(inner: B, in_flight: InFlight) -> Watched<B> {
        // Waiting for hyper to take the first frame.
        in_flight
            .mark
            .store(in_flight.state.now_ms(), Ordering::Release);
        Watched { inner, in_flight }
    }
}

impl<B: Body> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        this.in_flight.mark.store(NOT_WAITING, Ordering::Release);
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.in_flight
                .mark
                .store(this.in_flight.state.now_ms(), Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the supervisor does next.
enum Verdict {
    Wait(Instant),
    /// Close gracefully (HTTP/1.1: `Connection: close` after the exchange in
    /// flight; HTTP/2: GOAWAY), then drop after the drain timeout.
    Close(&'static str),
    Drop(&'static str),
}

/// `t + d`, or far in the future when a configured duration is absurd.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(10 * 365 * 86_400))
}

/// `closing`: a graceful close is under way; `hard_close_at`: when it ends
/// by force (None while the server's own shutdown grace decides).
fn verdict(
    state: &ConnState,
    d: &Deadlines,
    closing: bool,
    hard_close_at: Option<Instant>,
) -> Verdict {
    let now = Instant::now();
    let mut wake = after(now, d.max_age);
    if let Some(hard) = hard_close_at {
        if now >= hard {
            return Verdict::Drop("drain_timeout");
        }
        wake = wake.min(hard);
    }
    if !closing {
        let old_at = after(state.started, d.max_age);
        if now >= old_at {
            return Verdict::Close("max_age");
        }
        wake = wake.min(old_at);
    }
    if let Some(ms) = state.oldest_waiting_ms() {
        let stalled_at = after(state.at(ms), d.send);
        if now >= stalled_at {
            return Verdict::Drop("send_timeout");
        }
        wake = wake.min(stalled_at);
    }
    if state.requests.load(Ordering::Relaxed) == 0 {
        let first_at = after(state.started, d.first_request);
        if now >= first_at {
            return Verdict::Drop("first_request_timeout");
        }
        wake = wake.min(first_at);
    } else if state.in_flight.load(Ordering::Acquire) == 0 && !closing {
        let idle_at = after(
            state.at(state.last_active_ms.load(Ordering::Acquire)),
            d.idle,
        );
        if now >= idle_at {
            return Verdict::Close("idle");
        }
        wake = wake.min(idle_at);
    }
    // Requests start and end without waking us (that would cost a wake-up
    // per request): look again at least this often, so a stall or an idle
    // spell is acted on within half its deadline of when it is due.
    let tick = (d.send.min(d.idle) / 2).max(Duration::from_millis(10));
    Verdict::Wait(wake.min(after(now, tick)))
}

async fn serve_connection(
    accepted: Accepted,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    raw: Option<std::net::TcpStream>,
) {
    let Accepted {
        shared,
        peer,
        deadlines,
        pool,
        mut phase,
        ..
    } = accepted;
    struct Open<'a>(&'a crate::metrics::Metrics);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.open_connections.dec();
        }
    }
    let metrics_shared = Arc::clone(&shared);
    let metrics = &metrics_shared.metrics;
    metrics.open_connections.inc();
    let open = Open(metrics);

    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    // rustls keeps a client chain only once its verifier accepted it (the
    // handshake fails otherwise), so this is a verified chain; its leaf is
    // read once here and lent to every request on the connection.
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(|leaf| {
            crate::mtls::ClientCertificate(Arc::new(crate::mtls::PeerCertificate::from_der(leaf)))
        });
    let state = Arc::new(ConnState::new());
    let conn_info = Arc::new(crate::proxy::Conn::new(peer, ConnBuffers::new(pool)));
    let service = {
        let state = Arc::clone(&state);
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if let Some(c) = &client_cert {
                req.extensions_mut().insert(c.clone());
            }
            let in_flight = state.begin();
            // Boxed: the pipeline's state machine is large, and hyper's HTTP/2
            // server moves each stream's future several times (into its task,
            // through the scheduler); a box makes every move a pointer copy.
            let handled = Box::pin(crate::proxy::handle(
                Arc::clone(&shared),
                req,
                Arc::clone(&conn_info),
            ));
            async move {
                let Ok(resp) = handled.await;
                Ok::<_, Infallible>(resp.map(|b| Watched::new(b, in_flight)))
            }
        })
    };
    let builder = http_builder(deadlines.first_request, alpn.as_deref());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    // Whether hyper ended the connection itself, its last answer written:
    // then the close lingers. The block drops `conn`, and with it hyper's
    // socket handle, before that.
    let ended_by_hyper = {
        tokio::pin!(conn);
        let mut closing = false;
        let mut hard_close_at: Option<Instant> = None;
        loop {
            match *phase.borrow_and_update() {
                Phase::Serving => {}
                Phase::Draining => {
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    // The server's grace period, not ours, ends a shutdown drain.
                    hard_close_at = None;
                }
                Phase::Closing => {
                    closed(metrics, "shutdown");
                    break false;
                }
            }
            let wake = match verdict(&state, &deadlines, closing, hard_close_at) {
                Verdict::Wait(at) => at,
                Verdict::Close(reason) => {
                    closed(metrics, reason);
                    tracing::debug!(%peer, reason, "closing connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    hard_close_at = Some(after(Instant::now(), deadlines.drain));
                    continue;
                }
                Verdict::Drop(reason) => {
                    closed(metrics, reason);
                    tracing::debug!(%peer, reason, "dropping connection");
                    break false;
                }
            };
            tokio::select! {
                ended = conn.as_mut() => {
                    let Err(e) = ended else { break true };
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    // hyper's own HTTP/1.1 header_read_timeout: a client too
                    // slow to send a head gets no more time.
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        closed(metrics, "header_timeout");
                        break false;
                    }
                    // A request hyper refused (its 400, 431...) may leave
                    // unread bytes too.
                    break true;
                }
                () = tokio::time::sleep_until(wake) => {}
                changed = phase.changed() => {
                    if changed.is_err() {
                        // The server is gone.
                        break false;
                    }
                }
            }
        }
    };
    // The connection is no longer served: the lingering socket counts in
    // neither the open connections nor the shutdown's drain.
    drop(open);
    drop(phase);
    if let (true, Some(raw)) = (ended_by_hyper, raw) {
        linger(raw).await;
    }
}

/// The lingering close's bounds (nginx's lingering_time and
/// lingering_timeout, plus a cap on what is read): a client still sending
/// gets this long to take the answer; a slow one can't hold the socket.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Closes a connection whose last answer is written without losing that
/// answer: an answer given before the request was read (a 413 on its
/// Content-Length) leaves the rest of the body arriving, and closing a
/// socket with unread bytes sends a reset, which makes the client's kernel
/// drop the answer it has not read yet. So: send FIN (hyper has sent TLS's
/// close_notify), read and discard until the client closes too or a bound
/// is reached, then close. Nothing read is parsed or logged.
async fn linger(raw: std::net::TcpStream) {
    let _ = raw.shutdown(std::net::Shutdown::Write);
    // Registered with this runtime only now: hyper's handle on the same
    // socket has been deregistered and closed.
    let Ok(mut tcp) = TcpStream::from_std(raw) else {
        return;
    };
    let end = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let wait = end.min(Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(wait, tcp.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) if n < left => left -= n,
            // The client's FIN, an error, a bound: close.
            _ => return,
        }
    }
}

/// Plain HTTP: every request gets a 301 to the same path over HTTPS.
async fn serve_redirect(
    shared: Arc<Shared>,
    listener: TcpListener,
    https_port: Option<u16>,
    stop: watch::Receiver<bool>,
) {
    crate::listener::serve_http1(listener, stop, move |req| {
        let resp = redirect_response(&shared, &req, https_port);
        async move { resp }
    })
    .await;
}

fn redirect_response(
    shared: &Shared,
    req: &http::Request<hyper::body::Incoming>,
    https_port: Option<u16>,
) -> http::Response<crate::body::ProxyBody> {
    let rt = shared.runtime.load();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_ascii_lowercase());
    let allowed = match (&host, &rt.config.allowed_hosts) {
        (Some(h), Some(list)) => list.contains(h),
        (Some(_), None) => true,
        (None, _) => false,
    };
    let mut resp = match host.filter(|_| allowed) {
        None => crate::error::respond(&crate::error::ProxyError::from(
            crate::error::ClientError::MisdirectedHost,
        )),
        Some(h) => {
            let port = https_port.unwrap_or_else(|| rt.config.listen.port());
            let authority = if port == 443 {
                h
            } else {
                format!("{h}:{port}")
            };
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let location = format!("https://{authority}{pq}");
            let mut r = http::Response::new(crate::body::empty());
            *r.status_mut() = http::StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        }
    };
    rt.config.default_headers.apply(resp.headers_mut());
    resp
}
