//! Per-client connection share: what one client address may hold of
//! `limits.max_connections`, so that one address can't take every slot
//! (nginx `limit_conn`, HAProxy `src_conn_cur`). Counted from accept to
//! close, handshakes included.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// An IPv4 address, or an IPv6 /64 (one host's share of addresses; the
/// rate limits key clients the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

fn key(ip: IpAddr) -> ClientKey {
    match ip {
        IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ClientKey::V4(v4.octets()),
            None => {
                let o = v6.octets();
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&o[..8]);
                ClientKey::V6(prefix)
            }
        },
    }
}

/// Open connections per client.
#[derive(Debug, Default)]
pub struct ClientSlots {
    open: Mutex<HashMap<ClientKey, usize>>,
}

impl ClientSlots {
    /// One of `ip`'s `cap` slots, or None when it holds them all.
    pub fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ClientSlot> {
        let key = key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: Arc::clone(self),
            key,
        })
    }

    /// The clients with a connection open (for tests).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A connection's slot, given back when it is dropped.
#[derive(Debug)]
pub struct ClientSlot {
    slots: Arc<ClientSlots>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            // No entry for a client without connections: the map holds
            // what is open, never every address ever seen.
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_or_one_v6_64_gets_its_share_and_gets_it_back() {
        let slots = Arc::new(ClientSlots::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| slots.take(a, 3).expect("slot")).collect();
        assert!(slots.take(a, 3).is_none());
        // The same client as an IPv4-mapped IPv6 address.
        assert!(slots.take("::ffff:192.0.2.1".parse().unwrap(), 3).is_none());
        let other = slots.take(b, 3).expect("another client");
        drop(held);
        assert!(slots.take(a, 3).is_some());
        drop(other);
        assert_eq!(slots.clients(), 0);

        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = slots.take(v6("2001:db8:1:2::1"), 1).expect("slot");
        assert!(
            slots.take(v6("2001:db8:1:2:ffff::9"), 1).is_none(),
            "same /64"
        );
        let next = slots.take(v6("2001:db8:1:3::1"), 1).expect("another /64");
        drop((one, next));
        assert_eq!(slots.clients(), 0);
    }
}
