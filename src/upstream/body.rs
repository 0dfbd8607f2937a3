//! The request body, handed to one attempt at a time and taken back when
//! that attempt failed before reading any of it. Once an attempt has read
//! from it (hyper polls it only to send it), it is gone: no retry.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BoxError, ProxyBody};

struct Slot {
    /// The body while no attempt has read from it.
    body: Mutex<Option<ProxyBody>>,
    started: AtomicBool,
}

/// The body of one request, for all its attempts.
pub(super) struct Once {
    slot: Arc<Slot>,
}

impl Once {
    pub(super) fn new(body: ProxyBody) -> Once {
        Once {
            slot: Arc::new(Slot {
                body: Mutex::new(Some(body)),
                started: AtomicBool::new(false),
            }),
        }
    }

    /// The body for the next attempt, or None when an earlier attempt
    /// read from it.
    pub(super) fn take(&self) -> Option<ProxyBody> {
        if self.started() {
            return None;
        }
        Some(
            Lent {
                slot: Arc::clone(&self.slot),
                taken: None,
            }
            .boxed_unsync(),
        )
    }

    /// An attempt has read from the body (some of it may have been sent).
    pub(super) fn started(&self) -> bool {
        self.slot.started.load(Ordering::Acquire)
    }
}

/// The body as one attempt sees it: still in the slot until first polled.
struct Lent {
    slot: Arc<Slot>,
    taken: Option<ProxyBody>,
}

impl Lent {
    fn peek<T>(&self, f: impl FnOnce(&ProxyBody) -> T, none: T) -> T {
        match &self.taken {
            Some(b) => f(b),
            None => match self.slot.body.lock() {
                Ok(g) => g.as_ref().map_or(none, f),
                Err(_) => none,
            },
        }
    }
}

impl Body for Lent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            self.slot.started.store(true, Ordering::Release);
            let body = match self.slot.body.lock() {
                Ok(mut g) => g.take(),
                Err(_) => None,
            };
            match body {
                Some(b) => self.taken = Some(b),
                // Another attempt has it: this one cannot send a body.
                None => return Poll::Ready(Some(Err("request body already sent".into()))),
            }
        }
        match self.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peek(|b| b.is_end_stream(), false)
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(|b| b.size_hint(), SizeHint::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unread_body_is_lent_again_and_a_read_one_is_not() {
        let once = Once::new(crate::body::full("abc"));
        let first = once.take().expect("first attempt");
        assert_eq!(first.size_hint().exact(), Some(3));
        drop(first); // failed before reading: the body is still whole
        let second = once.take().expect("second attempt");
        let got = second.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"abc");
        assert!(once.started());
        assert!(once.take().is_none(), "a read body is never sent twice");
    }
}
