//! A backend that stores the body of every PUT at its path and answers a
//! GET with it: the legacy service of the key-store and HSM suites.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Stores the body of every PUT at its path; a GET answers it back. Keeps
/// every raw body it was sent.
pub struct RecordStore {
    pub url: String,
    pub records: Arc<Mutex<HashMap<String, Bytes>>>,
    pub received: Arc<Mutex<Vec<Bytes>>>,
}

impl RecordStore {
    pub async fn start() -> RecordStore {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let (r, rx) = (records.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (r, rx) = (r.clone(), rx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (r, rx) = (r.clone(), rx.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let method = req.method().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            rx.lock().unwrap().push(body.clone());
                            let out = if method == Method::PUT {
                                r.lock().unwrap().insert(path, body);
                                Bytes::from_static(b"{\"stored\":true}")
                            } else {
                                r.lock()
                                    .unwrap()
                                    .get(&path)
                                    .cloned()
                                    .unwrap_or(Bytes::from_static(b"{}"))
                            };
                            let mut resp = http::Response::new(Full::new(out));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        RecordStore {
            url: format!("http://{addr}"),
            records,
            received,
        }
    }

    pub fn stored(&self, path: &str) -> Bytes {
        self.records.lock().unwrap().get(path).cloned().unwrap()
    }

    pub fn put(&self, path: &str, body: Bytes) {
        self.records.lock().unwrap().insert(path.into(), body);
    }

    /// How many requests reached the store.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Every body the store was sent, concatenated.
    pub fn all_received(&self) -> Vec<u8> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.to_vec())
            .collect()
    }
}
