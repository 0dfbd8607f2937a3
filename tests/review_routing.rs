//! Review of issues 8 and 9 (routing): request lines that a backend routes
//! to an encrypting route's handler while the proxy gives them to a later
//! plaintext route. Each test is a regression test for one finding of the
//! review and is ignored until its fix lands; run them with
//! `cargo test --test review_routing -- --ignored`.
//!
//! The assertion is always on the backend's raw bytes: the secret must not
//! be there in plaintext (a fix may refuse or seal).

mod common;

use common::*;
use common::{review_setup, ReviewSetup as Setup};

async fn setup(routes: &str) -> Setup {
    review_setup(routes, "").await
}
use http::StatusCode;

/// Sends `{"ssn": secret}` as `method target` over HTTP/1.1 (hand-written,
/// so the request line is exactly as given) and over HTTP/2, and checks the
/// backend never reads the secret in plaintext.
async fn assert_sealed_or_refused(s: &Setup, method: &str, target: &str, secret: &str) {
    let body = format!(r#"{{"ssn":"{secret}"}}"#);
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = s.proxy.raw_h1(req.as_bytes()).await;
    assert_ne!(
        r.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {target}"
    );
    let h2 = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(format!(
            "https://localhost:{}{target}",
            s.proxy.https.port()
        ))
        .header("content-type", "application/json")
        .body(full_body(body.clone()))
        .expect("request");
    let r = s.proxy.h2_raw(h2).await;
    assert_ne!(
        r.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {target}"
    );
    assert!(
        !s.backend.raw_contains(secret.as_bytes()),
        "{method} {target}: the backend read the SSN in plaintext (forwarded as {:?})",
        s.backend
            .seen()
            .last()
            .map(|r| format!("{} {}", r.method, r.uri))
    );
}

// ---------------------------------------------------------------------------
// Finding 4: case_insensitive folds ASCII only
// ---------------------------------------------------------------------------

/// `match.case_insensitive` exists for backends that ignore path case, and
/// those fold more than ASCII: ASP.NET Core's endpoint routing and IIS
/// compare literals with `OrdinalIgnoreCase` (invariant upper case:
/// `ı`→`I`, `ſ`→`S`), Spring's case-insensitive `AntPathMatcher` uses
/// `String.equalsIgnoreCase` and `PathPattern` `Character.toLowerCase`
/// (`İ`→`i`, Kelvin sign→`k`). The proxy compares with
/// `eq_ignore_ascii_case`, so `/api/pat%C4%B1ents` goes to the catch-all.
/// (`java` on this machine: `"patıents".equalsIgnoreCase("patients")`,
/// `"patİents"`, `"uſers"` and `"\u212Ayc"` are all true.)
#[tokio::test]
async fn case_insensitive_routes_take_the_unicode_case_folds_backends_apply() {
    let s = setup(
        r#"  - name: patients
    match: { path_prefix: /api/patients, case_insensitive: true }
    upstream: legacy
    encrypt: ["$.ssn"]
  - name: users
    match: { path_prefix: /api/users, case_insensitive: true }
    upstream: legacy
    encrypt: ["$.ssn"]
  - name: kyc
    match: { path: /api/kyc, case_insensitive: true }
    upstream: legacy
    encrypt: ["$.ssn"]
"#,
    )
    .await;
    for (i, target) in [
        "/api/pat%C4%B1ents", // dotless ı: .NET OrdinalIgnoreCase, Java equalsIgnoreCase
        "/api/PAT%C4%B0ENTS", // dotted İ: Java toLowerCase / equalsIgnoreCase
        "/api/u%C5%BFers",    // long ſ: .NET OrdinalIgnoreCase, Java equalsIgnoreCase
        "/api/U%C5%BFERS/7",  // the same under the prefix
        "/api/%E2%84%AAyc",   // Kelvin sign: Java toLowerCase / equalsIgnoreCase
        "/%C4%B0/../api/patients", // sanity: resolves to the route itself
    ]
    .iter()
    .enumerate()
    {
        assert_sealed_or_refused(&s, "POST", target, &format!("078-04-{i:04}")).await;
    }
}

// ---------------------------------------------------------------------------
// Finding 5: a lowercase method skips a methods list
// ---------------------------------------------------------------------------

/// HTTP methods are case-sensitive, but Django (`REQUEST_METHOD.upper()`),
/// Flask/Werkzeug (`method.upper()`) and ASP.NET Core's
/// `HttpMethodMatcherPolicy` (case-insensitive) treat `post` as POST. An
/// encrypting route limited to `[POST, PUT]` lets `post` fall through to
/// the catch-all; `fieldseal check`'s warning speaks of *other* methods,
/// so the operator does not expect POST bodies to go out in plaintext.
#[tokio::test]
async fn method_case_does_not_move_a_body_off_its_encrypting_route() {
    let s = setup(
        r#"  - name: orders
    match: { path_prefix: /api/orders, methods: [POST, PUT] }
    upstream: legacy
    encrypt: ["$.ssn"]
"#,
    )
    .await;
    for (i, method) in ["post", "Post", "pOST", "put", "Put", "pUt"]
        .iter()
        .enumerate()
    {
        assert_sealed_or_refused(&s, method, "/api/orders", &format!("078-05-{i:04}")).await;
    }
}

// ---------------------------------------------------------------------------
// Finding 9: encrypting routes are case-sensitive by default
// ---------------------------------------------------------------------------

/// The default is to match paths case-sensitively, while ASP.NET Core
/// endpoint routing, IIS and Express (`caseSensitive: false` by default)
/// route `/API/Users` to the `/api/users` handler. Matching an encrypting
/// route too widely only seals more; matching it too narrowly sends the
/// body to the catch-all in plaintext, and `fieldseal check` says nothing.
#[tokio::test]
async fn other_case_spellings_of_an_encrypting_route_are_not_forwarded_in_plaintext() {
    let s = setup(
        r#"  - name: users
    match: { path_prefix: /api/users }
    upstream: legacy
    encrypt: ["$.ssn"]
"#,
    )
    .await;
    for (i, target) in [
        "/API/USERS",
        "/Api/Users",
        "/api/Users/7",
        "/API/users.json",
        "/aPi/uSeRs/7/x",
        "/API/USERS/",
        "/api/USERS.JSON",
    ]
    .iter()
    .enumerate()
    {
        assert_sealed_or_refused(&s, "POST", target, &format!("078-06-{i:04}")).await;
    }
}

// ---------------------------------------------------------------------------
// Finding 10: compatibility characters that NFKC turns into `.`, `..`, `\`
// ---------------------------------------------------------------------------

/// The canonical path refuses fullwidth forms (U+FF01-FF5E) because NFKC
/// or Windows best-fit mapping turns them into ASCII, but other code points
/// NFKC maps onto path syntax pass: U+2025 `‥` is `..`, U+2024 `․` and
/// U+FE52 `﹒` are `.`, U+FE68 `﹨` is `\` (Python:
/// `unicodedata.normalize("NFKC", "\u2025") == ".."`). A backend that
/// normalizes as the README assumes reads `/api/x/‥/users` as `/api/users`.
#[tokio::test]
async fn nfkc_spellings_of_path_syntax_are_refused_like_fullwidth_forms() {
    let s = setup(
        r#"  - name: users
    match: { path_prefix: /api/users }
    upstream: legacy
    encrypt: ["$.ssn"]
"#,
    )
    .await;
    for (i, target) in [
        "/api/x/%E2%80%A5/users",          // ‥ -> ..
        "/api/users%E2%80%A4json",         // ․ -> .  (an owned format suffix)
        "/api/users%EF%B9%92json",         // ﹒ -> .
        "/api%EF%B9%A8users",              // ﹨ -> \ (a separator on Windows)
        "/api/x/%EF%B9%92%EF%B9%92/users", // ﹒﹒ -> ..
        "/api/users%EF%BC%8Ejson",         // ． (fullwidth) -> .
        "/api/%EF%AC%80x/../users",        // ﬀ -> ff (a ligature)
        "/api/users%3F",                   // `?` once decoded again
        "/api/users%3Fx=1",
        "/api/users%23frag", // `#`
        "/api/users%3f.json",
    ]
    .iter()
    .enumerate()
    {
        assert_sealed_or_refused(&s, "POST", target, &format!("078-07-{i:04}")).await;
    }
}
