//! Requests and answers at the edges of the protocol, through the real
//! proxy: host-less requests, path spellings a backend reads as an
//! encrypting route's path, transfer and content codings, a backend's 101,
//! error bodies and logs that must not echo what the client sent, and rate
//! limits once the client table is full. Every test asserts what the backend
//! received.

mod common;

use std::time::Instant;

use common::*;
use http::StatusCode;

// ---------------------------------------------------------------------------
// Rate limits once the client table is full
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_full_client_table_still_limits_new_clients_and_keeps_tracked_ones_buckets() {
    let backend = Backend::start("a", Behavior::echo()).await;
    // Client addresses come from X-Forwarded-For (the test's peer is a
    // trusted proxy), so one socket stands for many clients.
    let yaml = format!(
        r#"trusted_proxies: [127.0.0.0/8]
rate_limit: {{ requests_per_second: 1, burst: 2, max_tracked_clients: 2 }}
{}"#,
        catch_all(&backend.url())
    );
    let proxy = TestProxy::start(&yaml).await;
    let c = proxy.h1();
    let ask = |ip: String| {
        let c = c.clone();
        let url = proxy.url("/x");
        async move {
            bounded("request", c.get(url).header("x-forwarded-for", ip).send())
                .await
                .expect("answer")
                .status()
        }
    };
    let started = Instant::now();
    // Two clients fill the table; the first keeps one of its two tokens.
    assert_eq!(ask("192.0.2.1".into()).await, StatusCode::OK);
    assert_eq!(ask("192.0.2.2".into()).await, StatusCode::OK);
    // 100 new clients, 6 requests each, while the table is full.
    let mut admitted_total = 0;
    for i in 0..100u32 {
        let ip = format!("10.9.{}.{}", i / 250, i % 250 + 1);
        let mut admitted = 0;
        for _ in 0..6 {
            match ask(ip.clone()).await {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{ip}: {other}"),
            }
        }
        // Its burst of 2, plus what refilled while the test ran: never more.
        let refill = started.elapsed().as_secs() as usize + 1;
        assert!(
            admitted <= 2 + refill,
            "{ip} admitted {admitted} of 6 with a burst of 2"
        );
        admitted_total += admitted;
    }
    // The tracked client's own bucket still holds its token.
    assert_eq!(
        ask("192.0.2.1".into()).await,
        StatusCode::OK,
        "a tracked client with a token left was refused"
    );
    assert_eq!(
        backend.count(),
        2 + admitted_total + 1,
        "refused requests reached the backend"
    );
}
