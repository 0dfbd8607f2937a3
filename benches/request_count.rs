//! What one proxied request costs outside the field transform, in counts
//! that don't depend on how busy the machine is: the real proxy in-process
//! (TLS listener on 127.0.0.1:0, the bench config's `plain` and `sealed`
//! routes), a local HTTP/1.1 backend answering every POST with the sealed
//! form of `bench/request.json` (as `bench/load.sh`'s nginx does), and a
//! keep-alive TLS client sending `bench/request.json`.
//!
//!   request_count                      # both routes, a Markdown table
//!   request_count plain|sealed N       # N requests after the warm-up
//!
//! Per request it reports the proxy's heap allocations and bytes (a
//! counting global allocator that tells the proxy's threads from the
//! client's and the backend's), and what the client sees on its socket:
//! reads and writes, TLS records per request and per response. The same
//! binary runs under `strace -f` (syscalls per leg) and
//! `valgrind --tool=callgrind` (instructions), see `bench/request-count.sh`,
//! which takes the difference of two runs so setup and handshakes cancel.
//!
//! Environment: CONNS (client connections, default 1: one request at a
//! time, every request its own round trip), WORKERS (proxy worker threads,
//! default 2), WARMUP (requests per connection before counting, default 50),
//! TID_MAP (a file to write "tid role" lines to, for the strace report).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use fieldseal::{Config, Listeners, Proxy};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- allocator

/// Which part of the harness a thread belongs to.
const OTHER: u8 = 0;
const PROXY: u8 = 1;
const CLIENT: u8 = 2;
const BACKEND: u8 = 3;
const ROLES: [&str; 4] = ["main", "proxy", "client", "backend"];

// A thread nobody tagged is the proxy's: under `server.runtime: per_core`
// (the default) fieldseal starts its serving runtimes on threads of its
// own, which no hook of ours reaches. The main thread, the client's and
// the backend's tag themselves.
thread_local! {
    static ROLE: Cell<u8> = const { Cell::new(PROXY) };
}

fn role() -> usize {
    ROLE.try_with(Cell::get).unwrap_or(OTHER) as usize
}

struct Counting;

static ALLOCS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static REALLOCS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static BYTES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

// Delegates to the system allocator, only counting calls and bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let r = role();
        ALLOCS[r].fetch_add(1, Ordering::Relaxed);
        BYTES[r].fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let r = role();
        ALLOCS[r].fetch_add(1, Ordering::Relaxed);
        BYTES[r].fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let r = role();
        REALLOCS[r].fetch_add(1, Ordering::Relaxed);
        BYTES[r].fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Threads and their roles, for `TID_MAP`.
static TIDS: Mutex<Vec<(String, u8)>> = Mutex::new(Vec::new());

fn enter(r: u8) {
    ROLE.with(|c| c.set(r));
    // "/proc/thread-self" links to "PID/task/TID".
    if let Ok(link) = std::fs::read_link("/proc/thread-self") {
        if let Some(tid) = link.file_name().and_then(|t| t.to_str()) {
            TIDS.lock().expect("tids").push((tid.to_string(), r));
        }
    }
}

// ---------------------------------------------------------------- client socket

/// What the client's socket saw, counted in its own I/O calls.
#[derive(Default)]
struct Wire {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    /// TLS records, by direction: application data (type 23) and others.
    records_in: AtomicU64,
    other_records_in: AtomicU64,
    records_out: AtomicU64,
}

/// Follows the TLS record framing of one direction of a byte stream.
#[derive(Default)]
struct Records {
    header: Vec<u8>,
    body_left: usize,
}

impl Records {
    /// Counts the records that start in `bytes`: (application data, other).
    fn feed(&mut self, mut bytes: &[u8]) -> (u64, u64) {
        let (mut app, mut other) = (0, 0);
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = 5 - self.header.len();
            let n = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 5 {
                if self.header[0] == 23 {
                    app += 1;
                } else {
                    other += 1;
                }
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
            }
        }
        (app, other)
    }
}

struct Counted {
    inner: TcpStream,
    wire: Arc<Wire>,
    inbound: Records,
    outbound: Records,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let got = &buf.filled()[before..];
            this.wire.reads.fetch_add(1, Ordering::Relaxed);
            this.wire
                .read_bytes
                .fetch_add(got.len() as u64, Ordering::Relaxed);
            let (app, other) = this.inbound.feed(got);
            this.wire.records_in.fetch_add(app, Ordering::Relaxed);
            this.wire
                .other_records_in
                .fetch_add(other, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.wire.writes.fetch_add(1, Ordering::Relaxed);
            this.wire.write_bytes.fetch_add(n as u64, Ordering::Relaxed);
            let (app, _) = this.outbound.feed(&buf[..n]);
            this.wire.records_out.fetch_add(app, Ordering::Relaxed);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------- setup

const BODY: &[u8] = include_bytes!("../bench/request.json");

/// The routes of `bench/fieldseal.yaml.in` that the load benchmark drives.
fn config_yaml(proxy: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"listen: {{ address: "{proxy}", tls: {{ cert: server.crt, key: server.key }} }}
upstreams:
  backend: {{ url: "http://{backend}", timeout: 30s, pool_max_idle_per_host: 256 }}
log: {{ level: warn, access_log: false }}
limits: {{ max_body: 1MiB, max_connections: 10000 }}
keys: {{ active: k1, ring: [ {{ id: k1, file: k1.key }} ] }}
routes:
  - name: plain
    match: {{ path_prefix: /plain }}
    upstream: backend
  - name: sealed
    match: {{ path_prefix: /sealed }}
    upstream: backend
    encrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
    decrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
"#
    )
}

struct Harness {
    proxy: SocketAddr,
    backend: SocketAddr,
    client_tls: Arc<rustls::ClientConfig>,
    /// The backend's answer: `bench/request.json` with its 4 fields sealed.
    answer: Bytes,
    _dir: tempfile::TempDir,
}

fn setup(proxy_rt: &tokio::runtime::Runtime, backend_rt: &tokio::runtime::Runtime) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = vec!["localhost".to_string()];
    let (cert, _) = fieldseal::tls::write_self_signed(dir.path(), &names, false).expect("cert");
    fieldseal::crypto::write_key_file(&dir.path().join("k1.key")).expect("key");

    let backend_l = backend_rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind backend");
    let backend = backend_l.local_addr().expect("addr");
    let proxy_l = proxy_rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind proxy");
    let proxy = proxy_l.local_addr().expect("addr");
    let yaml = config_yaml(proxy, backend);
    let path = dir.path().join("fieldseal.yaml");
    let config = Config::from_yaml(&yaml, &path).expect("config");

    let ring = fieldseal::crypto::Keyring::load(config.keys.as_ref().expect("keys")).expect("ring");
    let route = config.routes.by_name("sealed").expect("route");
    let (sealed, report) = fieldseal::proxy::encrypt_body(BODY, route, &ring).expect("seal");
    assert_eq!(
        report.encrypted, 4,
        "the benchmark document has 4 sealed fields"
    );
    let answer = Bytes::from(sealed);

    let served = answer.clone();
    backend_rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = backend_l.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let served = served.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let served = served.clone();
                    async move {
                        let sealed_route = req.uri().path().starts_with("/sealed");
                        let body = req.into_body().collect().await.map(|c| c.to_bytes());
                        // The one promise, checked on every request: no
                        // plaintext of a sealed field reaches the backend.
                        let leaked = sealed_route
                            && body
                                .as_ref()
                                .map_or(true, |b| b.windows(11).any(|w| w == b"123-45-6789"));
                        let resp = if leaked {
                            hyper::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::new()))
                        } else {
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(served))
                        };
                        Ok::<_, Infallible>(resp.expect("response"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });

    let proxy_obj = Proxy::new(config).expect("proxy loads");
    proxy_rt.spawn(proxy_obj.serve(
        Listeners {
            https: proxy_l,
            redirect: None,
            admin: None,
        },
        std::future::pending(),
    ));

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).expect("cert file") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Harness {
        proxy,
        backend,
        client_tls: Arc::new(tls),
        answer,
        _dir: dir,
    }
}

// ---------------------------------------------------------------- client

type Tls = tokio_rustls::client::TlsStream<Counted>;

async fn connect(h: &Harness, wire: &Arc<Wire>) -> Tls {
    let tcp = TcpStream::connect(h.proxy).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let counted = Counted {
        inner: tcp,
        wire: Arc::clone(wire),
        inbound: Records::default(),
        outbound: Records::default(),
    };
    tokio_rustls::TlsConnector::from(Arc::clone(&h.client_tls))
        .connect(ServerName::try_from("localhost").expect("name"), counted)
        .await
        .expect("handshake")
}

fn request_bytes(route: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /{route} HTTP/1.1\r\nhost: localhost\r\nuser-agent: fieldseal-bench/request_count\r\n\
         accept: application/json\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    r.extend_from_slice(BODY);
    r
}

/// One exchange on a keep-alive connection; returns the response body.
async fn exchange(tls: &mut Tls, request: &[u8], buf: &mut Vec<u8>) -> Vec<u8> {
    tls.write_all(request).await.expect("write request");
    tls.flush().await.expect("flush");
    buf.clear();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        // Into the spare capacity, not through a zeroed buffer: the
        // client's own cost stays out of the callgrind counts.
        buf.reserve(16 * 1024);
        let n = tls.read_buf(buf).await.expect("read");
        assert!(n > 0, "the proxy closed the connection");
    };
    let head = std::str::from_utf8(&buf[..head_end]).expect("head");
    assert!(head.starts_with("HTTP/1.1 200 "), "answer: {head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("content-length");
    while buf.len() < head_end + len {
        // Into the spare capacity, not through a zeroed buffer: the
        // client's own cost stays out of the callgrind counts.
        buf.reserve(16 * 1024);
        let n = tls.read_buf(buf).await.expect("read");
        assert!(n > 0, "the proxy closed the connection");
    }
    buf[head_end..head_end + len].to_vec()
}

struct Counts {
    allocs: [u64; 4],
    reallocs: [u64; 4],
    bytes: [u64; 4],
    reads: u64,
    read_bytes: u64,
    writes: u64,
    write_bytes: u64,
    records_in: u64,
    other_records_in: u64,
    records_out: u64,
}

fn snapshot(wire: &Wire) -> Counts {
    let all = |a: &[AtomicU64; 4]| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
    Counts {
        allocs: all(&ALLOCS),
        reallocs: all(&REALLOCS),
        bytes: all(&BYTES),
        reads: wire.reads.load(Ordering::Relaxed),
        read_bytes: wire.read_bytes.load(Ordering::Relaxed),
        writes: wire.writes.load(Ordering::Relaxed),
        write_bytes: wire.write_bytes.load(Ordering::Relaxed),
        records_in: wire.records_in.load(Ordering::Relaxed),
        other_records_in: wire.other_records_in.load(Ordering::Relaxed),
        records_out: wire.records_out.load(Ordering::Relaxed),
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Warms up CONNS connections on `route`, then sends `n` requests over
/// them and returns the counts of those `n` only.
fn run(
    h: &Harness,
    client_rt: &tokio::runtime::Runtime,
    route: &str,
    n: usize,
) -> (Counts, Counts) {
    let conns = env("CONNS", 1).max(1);
    let warmup = env("WARMUP", 50);
    let wire = Arc::new(Wire::default());
    let request = Arc::new(request_bytes(route));
    let expected: serde_json::Value = match route {
        // The proxy opens the 4 envelopes of the backend's answer.
        "sealed" => serde_json::from_slice(BODY).expect("json"),
        _ => serde_json::from_slice(&h.answer).expect("json"),
    };
    client_rt.block_on(async {
        let mut streams = Vec::new();
        let mut buf = Vec::with_capacity(16 * 1024);
        for _ in 0..conns {
            let mut tls = connect(h, &wire).await;
            let body = exchange(&mut tls, &request, &mut buf).await;
            let got: serde_json::Value = serde_json::from_slice(&body).expect("answer is JSON");
            assert_eq!(got, expected, "the answer on /{route}");
            for _ in 1..warmup {
                exchange(&mut tls, &request, &mut buf).await;
            }
            streams.push(tls);
        }
        let before = snapshot(&wire);
        let per = n.div_ceil(conns);
        let mut tasks = Vec::new();
        for mut tls in streams {
            let request = Arc::clone(&request);
            tasks.push(tokio::spawn(async move {
                let mut buf = Vec::with_capacity(16 * 1024);
                for _ in 0..per {
                    exchange(&mut tls, &request, &mut buf).await;
                }
                tls
            }));
        }
        let mut streams = Vec::new();
        for t in tasks {
            streams.push(t.await.expect("client task"));
        }
        let after = snapshot(&wire);
        // Closed after counting: the close is not part of a request.
        drop(streams);
        (before, after)
    })
}

fn main() {
    enter(OTHER);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workers = env("WORKERS", 2).max(1);
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("fs-proxy")
        .on_thread_start(|| enter(PROXY))
        .enable_all()
        .build()
        .expect("proxy runtime");
    let backend_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fs-backend")
        .on_thread_start(|| enter(BACKEND))
        .enable_all()
        .build()
        .expect("backend runtime");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let h = setup(&proxy_rt, &backend_rt);
    let conns = env("CONNS", 1).max(1);

    let routes: Vec<(String, usize)> = match &args[..] {
        [route, n] => vec![(route.clone(), n.parse().expect("N"))],
        _ => vec![("plain".into(), 2000), ("sealed".into(), 2000)],
    };
    let mut rows = Vec::new();
    // The client runs on its own thread, so its allocations are its own.
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(CLIENT);
            for (route, n) in &routes {
                let (a, b) = run(&h, &client_rt, route, *n);
                rows.push((route.clone(), n.div_ceil(conns) * conns, a, b));
            }
        });
    });
    if let Ok(path) = std::env::var("TID_MAP") {
        let mut out = format!(
            "proxy_port {}\nbackend_port {}\n",
            h.proxy.port(),
            h.backend.port()
        );
        for (tid, r) in TIDS.lock().expect("tids").iter() {
            out.push_str(&format!("tid {tid} {}\n", ROLES[*r as usize]));
        }
        std::fs::write(path, out).expect("write TID_MAP");
    }
    println!(
        "| route | requests | proxy allocations / reallocations / KiB allocated | client reads / writes | TLS records out (request) / in (response) | bytes out / in |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (route, n, a, b) in rows {
        let per = |x: u64, y: u64| (y - x) as f64 / n as f64;
        println!(
            "| {route} | {n} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} (other records {:.2}) | {:.0} / {:.0} |",
            per(a.allocs[1], b.allocs[1]),
            per(a.reallocs[1], b.reallocs[1]),
            per(a.bytes[1], b.bytes[1]) / 1024.0,
            per(a.reads, b.reads),
            per(a.writes, b.writes),
            per(a.records_out, b.records_out),
            per(a.records_in, b.records_in),
            per(a.other_records_in, b.other_records_in),
            per(a.write_bytes, b.write_bytes),
            per(a.read_bytes, b.read_bytes),
        );
    }
    // Not joined: the proxy and backend serve forever; the process ends here.
    std::process::exit(0);
}
