//! The cap on connections to one server: a connector that opens a new
//! connection only with one of the server's `max_connections` permits,
//! and keeps the permit inside the connection until it closes. Counting at
//! the connector, not per request, makes the cap exact whatever the pool
//! does: a connection hyper finishes in the background after its request
//! took an idle one still needs a permit, and an idle pooled connection
//! still holds one.
//!
//! A connect that finds no permit waits at most `queue_timeout`, behind at
//! most `max_queued` others; past either it fails with [`Busy`], before
//! anything was sent, and the request gets a 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::BoxError;

/// Why a connect was refused by the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// `max_queued` connects were already waiting.
    #[error("upstream server at max_connections and its queue is full")]
    QueueFull,
    /// No connection was freed within `queue_timeout`.
    #[error("upstream server at max_connections for queue_timeout")]
    QueueTimeout,
}

/// One server's permits and its queue, shared by every connect to it.
pub(super) struct Cap {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    max_queued: usize,
    queued: AtomicUsize,
    /// Open connections (`fieldseal_upstream_server_connections`).
    open: Gauge,
    queue_full: Counter,
    queue_timeout_count: Counter,
}

impl Cap {
    pub(super) fn new(
        max_connections: usize,
        queue_timeout: Duration,
        max_queued: usize,
        open: Gauge,
        queue_full: Counter,
        queue_timeout_count: Counter,
    ) -> Cap {
        Cap {
            permits: Arc::new(Semaphore::new(max_connections)),
            queue_timeout,
            max_queued,
            queued: AtomicUsize::new(0),
            open,
            queue_full,
            queue_timeout_count,
        }
    }

    /// A permit for a new connection, or what `borrow` finds (an idle
    /// connection of another runtime) when no permit is free. Queued like
    /// `acquire`; while queued, `borrow` is tried again every
    /// `BORROW_EVERY`, as a connection of another runtime that finishes
    /// its answer does not free a permit (only the server's cap is a
    /// reason to wait, so this happens only at the cap).
    pub(super) async fn acquire_or<T>(
        &self,
        mut borrow: impl FnMut() -> Option<T>,
    ) -> Result<Got<T>, Busy> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(Got::Permit(p));
        }
        if let Some(t) = borrow() {
            return Ok(Got::Borrowed(t));
        }
        let queued = Queued::enter(&self.queued);
        if queued.position > self.max_queued {
            self.queue_full.inc();
            return Err(Busy::QueueFull);
        }
        let wait = Arc::clone(&self.permits).acquire_owned();
        tokio::pin!(wait);
        let expired = tokio::time::sleep(self.queue_timeout);
        tokio::pin!(expired);
        let mut again = tokio::time::interval(BORROW_EVERY);
        again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                p = &mut wait => match p {
                    Ok(p) => return Ok(Got::Permit(p)),
                    Err(_) => break,
                },
                () = &mut expired => break,
                _ = again.tick() => {
                    if let Some(t) = borrow() {
                        return Ok(Got::Borrowed(t));
                    }
                }
            }
        }
        self.queue_timeout_count.inc();
        Err(Busy::QueueTimeout)
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(p);
        }
        // Counted before waiting, released by the guard on every way out
        // (including the connect future being dropped).
        let queued = Queued::enter(&self.queued);
        if queued.position > self.max_queued {
            self.queue_full.inc();
            return Err(Busy::QueueFull);
        }
        let wait = Arc::clone(&self.permits).acquire_owned();
        match tokio::time::timeout(self.queue_timeout, wait).await {
            Ok(Ok(p)) => Ok(p),
            // The semaphore is never closed; treat it as a timeout anyway.
            Ok(Err(_)) | Err(_) => {
                self.queue_timeout_count.inc();
                Err(Busy::QueueTimeout)
            }
        }
    }
}

/// What `acquire_or` got.
pub(super) enum Got<T> {
    Permit(OwnedSemaphorePermit),
    Borrowed(T),
}

/// How often a request queued at the cap looks for an idle connection of
/// another runtime.
const BORROW_EVERY: Duration = Duration::from_millis(2);

/// A place in a server's queue, left when dropped.
struct Queued<'a> {
    count: &'a AtomicUsize,
    /// 1 for the first waiter.
    position: usize,
}

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize) -> Queued<'a> {
        let position = count.fetch_add(1, Ordering::AcqRel) + 1;
        Queued { count, position }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connector whose connections each hold one of the server's permits.
#[derive(Clone)]
pub(super) struct Capped<C> {
    inner: C,
    cap: Arc<Cap>,
}

impl<C> Capped<C> {
    pub(super) fn new(inner: C, cap: Arc<Cap>) -> Capped<C> {
        Capped { inner, cap }
    }
}

impl<C> tower_service::Service<Uri> for Capped<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = CappedIo<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // The clone is what gets called after the wait (poll_ready was for
        // `self.inner`: swap them so the ready one is used).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cap = Arc::clone(&self.cap);
        Box::pin(async move {
            let permit = cap.acquire().await?;
            let io = inner.call(dst).await.map_err(Into::into)?;
            cap.open.inc();
            Ok(CappedIo {
                io,
                _permit: permit,
                open: cap.open.clone(),
            })
        })
    }
}

/// A connection and the permit it holds until it is dropped (closed).
pub struct CappedIo<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl<T> CappedIo<T> {
    /// `io` holding `permit` of `cap` until it is dropped.
    pub(super) fn hold(cap: &Cap, io: T, permit: OwnedSemaphorePermit) -> CappedIo<T> {
        cap.open.inc();
        CappedIo {
            io,
            _permit: permit,
            open: cap.open.clone(),
        }
    }
}

impl<T> Drop for CappedIo<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T: Connection> Connection for CappedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for CappedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for CappedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(n: usize, queued: usize) -> Cap {
        Cap::new(
            n,
            Duration::from_millis(50),
            queued,
            Gauge::default(),
            Counter::default(),
            Counter::default(),
        )
    }

    #[tokio::test]
    async fn past_the_cap_a_connect_waits_then_is_refused_and_a_freed_permit_serves_it() {
        let c = Arc::new(cap(1, 1));
        let first = c.acquire().await.expect("first");
        assert_eq!(c.acquire().await.err(), Some(Busy::QueueTimeout));
        // One waiter fills the queue: the next is refused at once.
        let waiting = {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.acquire().await.map(drop) })
        };
        while c.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(c.acquire().await.err(), Some(Busy::QueueFull));
        drop(first);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        assert_eq!(c.queued.load(Ordering::Acquire), 0, "the queue is left");
    }
}
