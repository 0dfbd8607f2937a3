//! Body helpers: the body type the proxy sends, bounded collection, and
//! bounded decompression (a zip bomb stops at the limit).

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// A body that fails when no frame arrives for `idle`: a streamed
    /// upstream answer that stalls is cut off instead of hanging the client.
    ///
    /// The timer is lazy: a frame only moves `deadline`; the sleep is armed
    /// when the body is first pending and re-armed only when it fires early,
    /// so a busy stream doesn't touch the timer wheel once per frame.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
        deadline: tokio::time::Instant,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        let deadline = tokio::time::Instant::now() + idle;
        IdleTimeout {
            inner,
            sleep: tokio::time::sleep_until(deadline),
            deadline,
            idle,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("body stalled for longer than the idle timeout")]
pub struct BodyIdle;

impl<B> Body for IdleTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.deadline = tokio::time::Instant::now() + *this.idle;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => loop {
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Fired: a stall only if no frame moved the deadline since.
                if tokio::time::Instant::now() >= *this.deadline {
                    return Poll::Ready(Some(Err(Box::new(BodyIdle))));
                }
                let deadline = *this.deadline;
                this.sleep.as_mut().reset(deadline);
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum CollectError {
    TooLarge,
    Broken,
    Timeout,
    /// The connection's or the process's buffer budget is spent.
    OverBudget,
}

/// Reads a whole body within `deadline`, refusing it as soon as it passes
/// `limit` bytes, with every byte read counted in `reservation` first: a body that would pass the connection's or the process's budget is
/// refused as it arrives, not after it has been held.
pub async fn collect_reserved<B>(
    body: B,
    limit: u64,
    deadline: Duration,
    reservation: &mut Reservation,
) -> Result<Bytes, CollectError>
where
    B: Body<Data = Bytes> + Unpin,
{
    match tokio::time::timeout(deadline, collect_inner(body, limit, reservation)).await {
        Ok(r) => r,
        Err(_) => Err(CollectError::Timeout),
    }
}

async fn collect_inner<B>(
    mut body: B,
    limit: u64,
    reservation: &mut Reservation,
) -> Result<Bytes, CollectError>
where
    B: Body<Data = Bytes> + Unpin,
{
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| CollectError::Broken)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(CollectError::TooLarge);
        }
        if !reservation.try_grow(data.len() as u64) {
            return Err(CollectError::OverBudget);
        }
        // One frame (the common case) is kept without a copy.
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(total.max(f.len() * 2));
                b.extend_from_slice(f);
                b.extend_from_slice(&data);
                rest = Some(b);
            }
            (Some(_), Some(b)) => b.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

// ---------------------------------------------------------------------------
// Buffer budget
// ---------------------------------------------------------------------------

/// The limits a reservation is held to (from `limits:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    pub per_connection: u64,
    pub total: u64,
}

/// Bytes of bodies the proxy holds for one listener (the process), shown as
/// the `fieldseal_buffered_bytes` gauge.
#[derive(Debug, Default)]
pub struct BufferPool {
    used: AtomicU64,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl BufferPool {
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> BufferPool {
        BufferPool {
            used: AtomicU64::new(0),
            gauge,
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// One connection's share of the pool.
#[derive(Debug)]
pub struct ConnBuffers {
    pool: Arc<BufferPool>,
    used: AtomicU64,
}

impl ConnBuffers {
    pub fn new(pool: Arc<BufferPool>) -> ConnBuffers {
        ConnBuffers {
            pool,
            used: AtomicU64::new(0),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation that grows as a body is read.
    pub fn reserve(self: &Arc<Self>, limits: BufferLimits) -> Reservation {
        Reservation {
            conn: Arc::clone(self),
            limits,
            bytes: 0,
        }
    }
}

fn try_add(counter: &AtomicU64, n: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|&t| t <= limit)
        })
        .is_ok()
}

/// Bytes counted against a connection and the pool until dropped.
#[derive(Debug)]
pub struct Reservation {
    conn: Arc<ConnBuffers>,
    limits: BufferLimits,
    bytes: u64,
}

impl Reservation {
    /// Counts `n` more bytes, or false (nothing counted) when that would pass
    /// the connection's or the pool's limit.
    pub fn try_grow(&mut self, n: u64) -> bool {
        if !try_add(&self.conn.used, n, self.limits.per_connection) {
            return false;
        }
        if !try_add(&self.conn.pool.used, n, self.limits.total) {
            self.conn.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.conn
            .pool
            .gauge
            .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        self.bytes += n;
        true
    }

    /// Gives back all but `n` bytes: what is held shrank (the input of a
    /// decoding or a transform, dropped once its output is counted).
    pub fn shrink_to(&mut self, n: u64) {
        if n < self.bytes {
            self.release(self.bytes - n);
            self.bytes = n;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn release(&self, n: u64) {
        self.conn.used.fetch_sub(n, Ordering::AcqRel);
        self.conn.pool.used.fetch_sub(n, Ordering::AcqRel);
        self.conn
            .pool
            .gauge
            .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

/// Largest frame a buffered body hands out at once. HTTP/2 pulls a frame
/// only when the peer has window for it, so what sits in h2's own send
/// buffer stays small and the rest stays here, counted in the reservation.
const HELD_CHUNK: usize = 16 * 1024;

/// A buffered body counted in `reservation` until it is sent or dropped.
pub fn reserved(bytes: Bytes, reservation: Reservation) -> ProxyBody {
    if bytes.is_empty() {
        return empty();
    }
    Held {
        rest: bytes,
        _reservation: reservation,
    }
    .boxed_unsync()
}

struct Held {
    rest: Bytes,
    _reservation: Reservation,
}

impl Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(HELD_CHUNK);
        let chunk = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

/// The content codings of a message, in the order they were applied, read
/// across every Content-Encoding line (a list may be split over several
/// lines: `identity` then `gzip` is gzip). `identity` adds nothing. None for
/// a coding we can't decode or a value that is not text.
pub fn codings<'a>(values: impl IntoIterator<Item = &'a http::HeaderValue>) -> Option<Vec<Coding>> {
    let mut out = Vec::new();
    for v in values {
        for token in v.to_str().ok()?.split(',') {
            match token.trim().to_ascii_lowercase().as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" => out.push(Coding::Gzip),
                "deflate" => out.push(Coding::Deflate),
                "br" => out.push(Coding::Brotli),
                _ => return None,
            }
        }
    }
    Some(out)
}

/// Most codings stacked on one answer that we undo. One is the norm; more is
/// only ever seen from misconfigured servers or as a decompression bomb.
pub const MAX_STACKED_CODINGS: usize = 2;

/// Undoes `codings` (as listed by `codings`, last applied first), each step
/// bounded by `limit`. `data` is counted in `reservation`; every block of
/// output is counted before it is kept (input and output both, while both
/// are held), so a small compressed body can't hold more than the budget,
/// and when it is done only the output stays counted.
pub fn decode_all(
    data: Bytes,
    codings: &[Coding],
    limit: u64,
    reservation: &mut Reservation,
) -> Result<Bytes, CollectError> {
    if codings.len() > MAX_STACKED_CODINGS {
        return Err(CollectError::Broken);
    }
    let mut data = data;
    for c in codings.iter().rev() {
        let out = decode(&data, *c, limit, reservation)?;
        reservation.shrink_to(reservation.bytes().saturating_sub(data.len() as u64));
        data = out;
    }
    Ok(data)
}

/// How much decoded output is read (and counted) at a time.
const DECODE_BLOCK: usize = 64 * 1024;

/// Decodes `data`; Err(TooLarge) once the output passes `limit`,
/// Err(OverBudget) once it would pass `reservation`'s budget.
fn decode(
    data: &[u8],
    coding: Coding,
    limit: u64,
    reservation: &mut Reservation,
) -> Result<Bytes, CollectError> {
    let mut reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        // "deflate" is zlib-wrapped per RFC 9110; some servers send raw deflate.
        Coding::Deflate if data.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(data))
        }
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(data)),
        Coding::Brotli => Box::new(brotli::Decompressor::new(data, 8192)),
    };
    let mut out: Vec<u8> = Vec::new();
    let mut block = vec![0u8; DECODE_BLOCK];
    loop {
        let n = match reader.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(CollectError::Broken),
        };
        if (out.len() + n) as u64 > limit {
            return Err(CollectError::TooLarge);
        }
        if !reservation.try_grow(n as u64) {
            return Err(CollectError::OverBudget);
        }
        out.extend_from_slice(&block[..n]);
    }
    Ok(Bytes::from(out))
}

/// `application/json`, `application/*+json`, any parameters, any case.
/// A charset other than UTF-8 is not JSON we can read.
///
/// Parsed strictly to RFC 9110's grammar (`type/subtype *( OWS ";" OWS
/// name=value )`): PHP, Rack and Rails cut a media type at `,`, `;` or a
/// space, so `application/x-www-form-urlencoded, a+json` would be JSON to a
/// lax check and a form to them, and a JSON string could smuggle form fields.
pub fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    media_type_is(content_type, |ty, sub| {
        ty.eq_ignore_ascii_case("application")
            && (sub.eq_ignore_ascii_case("json") || ends_with_ignore_case(sub, "+json"))
    })
}

/// `application/x-www-form-urlencoded`, parsed as strictly as [`is_json`]
/// (a charset other than UTF-8 is not a form we can read).
pub fn is_form(content_type: Option<&http::HeaderValue>) -> bool {
    media_type_is(content_type, |ty, sub| {
        ty.eq_ignore_ascii_case("application") && sub.eq_ignore_ascii_case("x-www-form-urlencoded")
    })
}

/// Does `s` end with `suffix`, ASCII case ignored?
fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len()
        .checked_sub(suffix.len())
        .and_then(|at| s.as_bytes().get(at..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
}

/// Is the media type one `wanted(type, subtype)` accepts (both compared
/// case-insensitively by `wanted`), with well-formed parameters and no
/// charset but UTF-8?
fn media_type_is(
    content_type: Option<&http::HeaderValue>,
    wanted: impl Fn(&str, &str) -> bool,
) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ows = |c: char| c == ' ' || c == '\t';
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim_matches(ows);
    let Some((ty, sub)) = mime.split_once('/') else {
        return false;
    };
    if !is_token(ty) || !is_token(sub) {
        return false;
    }
    wanted(ty, sub)
        && parts.all(|p| {
            let Some((k, v)) = p.trim_matches(ows).split_once('=') else {
                return false;
            };
            let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
            let value = if quoted { &v[1..v.len() - 1] } else { v };
            let well_formed = is_token(k)
                && if quoted {
                    !value.contains(['"', '\\', ','])
                } else {
                    is_token(v)
                };
            well_formed
                && (!k.eq_ignore_ascii_case("charset")
                    || value.eq_ignore_ascii_case("utf-8")
                    || value.eq_ignore_ascii_case("utf8"))
        })
}

/// Is the media type JSON Patch (RFC 6902, `application/json-patch+json`)?
/// Only meaningful once `is_json` accepted it.
pub fn is_json_patch(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim_matches([' ', '\t']))
        .is_some_and(|m| m.eq_ignore_ascii_case("application/json-patch+json"))
}

/// RFC 9110 `token`: one or more tchar.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn json_content_types() {
        let j = |s: &'static str| is_json(Some(&HeaderValue::from_static(s)));
        assert!(j("application/json"));
        assert!(j("Application/JSON; charset=UTF-8"));
        assert!(j("application/vnd.api+json"));
        assert!(j("application/merge-patch+json; foo=bar"));
        assert!(!j("text/plain"));
        assert!(!j("application/jsonx"));
        assert!(!j("application/json; charset=latin1"));
        // What PHP, Rack and Rails would read as a form must not pass as JSON.
        assert!(!j("application/x-www-form-urlencoded, application/a+json"));
        assert!(!j("application/x-www-form-urlencoded a+json"));
        assert!(!j("application/json, text/plain"));
        assert!(!j("application/json;"));
        assert!(!j("application/json; charset"));
        assert!(!j("application/ json"));
        assert!(j("application/json ; charset=\"utf-8\""));
        assert!(j("application/json;charset=utf-8;v=1"));
        assert!(!is_json(None));
        // Subtypes compare without case, suffix included; a subtype
        // shorter than the suffix is no match.
        assert!(j("application/VND.API+JSON"));
        assert!(j("APPLICATION/Problem+Json"));
        assert!(!j("application/json+"));
        assert!(!j("application/son"));
        assert!(!j("application/+jso"));
        let f = |s: &'static str| is_form(Some(&HeaderValue::from_static(s)));
        assert!(f("application/x-www-form-urlencoded"));
        assert!(f("Application/X-WWW-Form-URLEncoded; charset=UTF-8"));
        assert!(!f("application/x-www-form-urlencodedx"));
        assert!(!f("application/json"));
    }

    #[test]
    fn decode_stops_at_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(
            decode(&gz, Coding::Gzip, 1000, &mut roomy()),
            Err(CollectError::TooLarge)
        );
        assert_eq!(
            decode(&gz, Coding::Gzip, 1 << 20, &mut roomy())
                .unwrap()
                .len(),
            1 << 20
        );
    }

    fn roomy() -> Reservation {
        let conn = Arc::new(ConnBuffers::new(Arc::new(BufferPool::default())));
        conn.reserve(BufferLimits {
            per_connection: u64::MAX / 2,
            total: u64::MAX / 2,
        })
    }

    /// Finding 17 of the review of issues 8/9: decoded bytes are counted
    /// as they are produced, input and output together while both are held,
    /// so a small compressed body can't take more than the budget.
    #[test]
    fn decoding_is_counted_as_it_goes_and_refused_past_the_budget() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let pool = Arc::new(BufferPool::default());
        let conn = Arc::new(ConnBuffers::new(Arc::clone(&pool)));
        let limits = BufferLimits {
            per_connection: 512 << 10,
            total: 1 << 30,
        };
        let mut r = conn.reserve(limits);
        assert!(r.try_grow(gz.len() as u64));
        // Within the size limit, past the connection's budget: refused.
        assert_eq!(
            decode_all(gz.clone(), &[Coding::Gzip], 2 << 20, &mut r),
            Err(CollectError::OverBudget)
        );
        assert!(conn.used() <= limits.per_connection);
        drop(r);
        assert_eq!((conn.used(), pool.used()), (0, 0));
        // With room: only the output stays counted.
        let limits = BufferLimits {
            per_connection: 4 << 20,
            total: 1 << 30,
        };
        let mut r = conn.reserve(limits);
        assert!(r.try_grow(gz.len() as u64));
        let out = decode_all(gz, &[Coding::Gzip], 2 << 20, &mut r).unwrap();
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(
            (r.bytes(), conn.used(), pool.used()),
            (1 << 20, 1 << 20, 1 << 20)
        );
    }

    #[test]
    fn codings_are_read_across_every_line() {
        let h = |vals: &[&'static str]| {
            let mut m = http::HeaderMap::new();
            for v in vals {
                m.append(http::header::CONTENT_ENCODING, HeaderValue::from_static(v));
            }
            codings(m.get_all(http::header::CONTENT_ENCODING))
        };
        assert_eq!(h(&[]), Some(vec![]));
        assert_eq!(h(&["identity", "gzip"]), Some(vec![Coding::Gzip]));
        assert_eq!(h(&["gzip", "identity"]), Some(vec![Coding::Gzip]));
        assert_eq!(h(&["GZIP , br"]), Some(vec![Coding::Gzip, Coding::Brotli]));
        assert_eq!(
            h(&["x-gzip", "deflate"]),
            Some(vec![Coding::Gzip, Coding::Deflate])
        );
        assert_eq!(h(&["identity", "compress"]), None);
        assert_eq!(h(&["gzip, zstd"]), None);
        let mut m = http::HeaderMap::new();
        m.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_bytes(b"gz\xffip").unwrap(),
        );
        assert_eq!(codings(m.get_all(http::header::CONTENT_ENCODING)), None);
    }

    #[test]
    fn stacked_codings_are_undone_last_first_and_bounded() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"a\":1}").unwrap();
        let gz = gz.finish().unwrap();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&gz).unwrap();
        }
        let out = decode_all(
            Bytes::from(br),
            &[Coding::Gzip, Coding::Brotli],
            1000,
            &mut roomy(),
        )
        .unwrap();
        assert_eq!(&out[..], b"{\"a\":1}");
        let three = [Coding::Gzip, Coding::Gzip, Coding::Gzip];
        assert_eq!(
            decode_all(Bytes::from(gz.clone()), &three, 1000, &mut roomy()),
            Err(CollectError::Broken)
        );
        assert_eq!(
            decode_all(Bytes::from_static(b"plain"), &[], 1000, &mut roomy()).unwrap(),
            Bytes::from_static(b"plain")
        );
    }

    #[test]
    fn reservations_are_bounded_per_connection_and_in_total_and_released_on_drop() {
        let pool = Arc::new(BufferPool::default());
        let a = Arc::new(ConnBuffers::new(Arc::clone(&pool)));
        let b = Arc::new(ConnBuffers::new(Arc::clone(&pool)));
        let limits = BufferLimits {
            per_connection: 100,
            total: 150,
        };
        let mut ra = a.reserve(limits);
        assert!(ra.try_grow(60));
        assert!(!ra.try_grow(41), "past the connection's 100");
        assert!(ra.try_grow(40));
        let mut rb = b.reserve(limits);
        assert!(rb.try_grow(50));
        assert!(!rb.try_grow(1), "past the total of 150");
        assert_eq!((a.used(), b.used(), pool.used()), (100, 50, 150));
        ra.shrink_to(10);
        assert_eq!((a.used(), pool.used()), (10, 60));
        ra.shrink_to(20);
        assert_eq!(ra.bytes(), 10, "shrink_to never grows");
        assert!(rb.try_grow(50));
        drop(ra);
        drop(rb);
        assert_eq!((a.used(), b.used(), pool.used()), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_held_body_hands_out_small_frames_and_releases_when_dropped() {
        let pool = Arc::new(BufferPool::default());
        let conn = Arc::new(ConnBuffers::new(Arc::clone(&pool)));
        let mut r = conn.reserve(BufferLimits {
            per_connection: 1 << 20,
            total: 1 << 20,
        });
        assert!(r.try_grow(100_000));
        let mut body = reserved(Bytes::from(vec![7u8; 100_000]), r);
        assert_eq!(body.size_hint().exact(), Some(100_000));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), HELD_CHUNK);
        assert_eq!(pool.used(), 100_000, "held until the body is gone");
        drop(body);
        assert_eq!(pool.used(), 0);
    }

    #[tokio::test]
    async fn collect_refuses_past_limit() {
        let conn = Arc::new(ConnBuffers::new(Arc::new(BufferPool::default())));
        let mut r = conn.reserve(BufferLimits {
            per_connection: 1 << 20,
            total: 1 << 20,
        });
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        assert_eq!(
            collect_reserved(body, 99, Duration::from_secs(1), &mut r).await,
            Err(CollectError::TooLarge)
        );
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        assert_eq!(
            collect_reserved(body, 100, Duration::from_secs(1), &mut r)
                .await
                .unwrap()
                .len(),
            100
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_cuts_a_stalled_body_but_not_a_slow_steady_one() {
        use http_body_util::StreamBody;
        // A frame every 600 ms with a 1 s idle limit: never idle long enough.
        let steady = futures_util::stream::unfold(0u8, |n| async move {
            if n == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let body = IdleTimeout::new(StreamBody::new(steady), Duration::from_secs(1));
        let got = body
            .collect()
            .await
            .expect("steady body completes")
            .to_bytes();
        assert_eq!(&got[..], b"xxxxx");
        // One frame, then silence: cut off after the idle limit.
        let stalled = futures_util::stream::unfold(0u8, |n| async move {
            if n == 1 {
                std::future::pending::<()>().await;
            }
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let body = IdleTimeout::new(StreamBody::new(stalled), Duration::from_secs(1));
        assert!(body.collect().await.is_err(), "stalled body must fail");
    }
}
