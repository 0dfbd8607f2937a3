use super::*;
use crate::crypto::KeySource;
use crate::headers::UpstreamPolicy;
use crate::routes::PathMatch;
use http::Method;

const MINIMAL: &str = r#"
listen: { address: "127.0.0.1:8443", tls: { cert: certs/server.crt, key: certs/server.key } }
upstreams:
  legacy: { url: "http://127.0.0.1:8080", connect_timeout: 2s, timeout: 30s }
routes:
  - name: users
    match: { path_prefix: /api/users, methods: [GET, POST] }
    upstream: legacy
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, Path::new("/etc/fieldseal/test.yaml"))
}

#[test]
fn minimal_config_compiles_with_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(c.tls.cert, PathBuf::from("/etc/fieldseal/certs/server.crt"));
    assert_eq!(c.limits.max_body, 1 << 20);
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    let r = &c.routes.routes[0];
    assert_eq!(r.path, PathMatch::Prefix("/api/users".into()));
    assert_eq!(r.methods.as_deref(), Some(&[Method::GET, Method::POST][..]));
    let names: Vec<&str> = r.headers.headers.iter().map(|h| h.name.as_str()).collect();
    assert!(names.contains(&"strict-transport-security"));
    assert!(names.contains(&"x-xss-protection"));
}

#[test]
fn unknown_key_is_named_with_line_and_column() {
    let text = MINIMAL.replace("connect_timeout: 2s", "conect_timeout: 2s");
    let e = load(&text).unwrap_err();
    assert!(e.message.contains("conect_timeout"), "{e}");
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.column.is_some());
    assert!(
        e.to_string().starts_with("/etc/fieldseal/test.yaml:4:"),
        "{e}"
    );
}

#[test]
fn unknown_upstream_is_located() {
    let text = MINIMAL.replace("upstream: legacy", "upstream: legacyy");
    let e = load(&text).unwrap_err();
    assert!(e.message.contains("legacyy"), "{e}");
    assert_eq!(e.line, Some(8), "{e}");
}

#[test]
fn bad_duration_and_size() {
    let e = load(&MINIMAL.replace("timeout: 30s", "timeout: soon")).unwrap_err();
    assert!(e.message.contains("soon"), "{e}");
    let e = load(&format!("{MINIMAL}limits: {{ max_body: lots }}\n")).unwrap_err();
    assert!(e.message.contains("lots"), "{e}");
}

#[test]
fn route_overrides_headers_and_rate_limit() {
    let text = format!(
        "{MINIMAL}    rate_limit: {{ requests_per_second: 10, burst: 20 }}\n    headers: {{ csp: \"default-src 'none'\", x_frame_options: false, hsts: {{ value: \"max-age=1\", upstream: keep }} }}\nrate_limit: {{ requests_per_second: 100, burst: 200 }}\nheaders: {{ csp: \"default-src 'self'\" }}\n"
    );
    let c = load(&text).unwrap();
    let r = &c.routes.routes[0];
    assert_eq!(r.rate_limit.unwrap().burst.get(), 20);
    assert_eq!(c.rate_limit.default.unwrap().burst.get(), 200);
    let get = |n: &str| r.headers.headers.iter().find(|h| h.name.as_str() == n);
    assert_eq!(
        get("content-security-policy").unwrap().value,
        "default-src 'none'"
    );
    assert!(get("x-frame-options").is_none());
    assert_eq!(
        get("strict-transport-security").unwrap().policy,
        UpstreamPolicy::Keep
    );
    let g = c
        .default_headers
        .headers
        .iter()
        .find(|h| h.name.as_str() == "content-security-policy")
        .unwrap();
    assert_eq!(g.value, "default-src 'self'");
}

#[test]
fn keys_never_inline_and_iterations_floor() {
    let keys = "keys:\n  active: k1\n  ring:\n    - { id: k1, passphrase_env: P, salt_env: S }\n  pbkdf2_iterations: 1000\n";
    let e = load(&format!("{MINIMAL}{keys}")).unwrap_err();
    assert!(e.message.contains("pbkdf2_iterations"), "{e}");
    let inline = "keys:\n  active: k1\n  ring:\n    - { id: k1, key: c2VjcmV0 }\n";
    let e = load(&format!("{MINIMAL}{inline}")).unwrap_err();
    assert!(e.message.contains("unknown field `key`"), "{e}");
    let ok = "keys:\n  active: k2\n  ring:\n    - { id: k1, passphrase_env: P, salt_env: S }\n    - { id: k2, file: keys/k2.key }\n";
    let c = load(&format!("{MINIMAL}{ok}")).unwrap();
    let spec = c.keys.unwrap();
    assert_eq!(spec.active, "k2");
    assert_eq!(spec.pbkdf2_iterations, 600_000);
    assert_eq!(
        spec.keys[1].source,
        KeySource::File(PathBuf::from("/etc/fieldseal/keys/k2.key"))
    );
}

#[test]
fn non_canonical_route_path_refused() {
    let e = load(&MINIMAL.replace("/api/users", "/api//users")).unwrap_err();
    assert!(e.message.contains("canonical"), "{e}");
}

#[test]
fn encrypt_rules_need_keys() {
    let text = format!("{MINIMAL}    encrypt: [\"$.ssn\"]\n");
    let e = load(&text).unwrap_err();
    assert!(e.message.contains("keys"), "{e}");
}

#[test]
fn on_decrypt_failure_null_unquoted_is_the_null_mode() {
    use crate::transform::OnDecryptFailure;
    let keys = "keys:\n  active: k1\n  ring:\n    - { id: k1, file: k1.key }\n";
    let mode = |line: &str| {
        let text = format!("{MINIMAL}    decrypt: auto\n{line}{keys}");
        load(&text).unwrap().routes.routes[0]
            .open
            .as_ref()
            .unwrap()
            .on_failure
    };
    assert_eq!(mode(""), OnDecryptFailure::Error);
    assert_eq!(
        mode("    on_decrypt_failure: error\n"),
        OnDecryptFailure::Error
    );
    assert_eq!(
        mode("    on_decrypt_failure: null\n"),
        OnDecryptFailure::Null
    );
    assert_eq!(mode("    on_decrypt_failure: ~\n"), OnDecryptFailure::Null);
    assert_eq!(
        mode("    on_decrypt_failure: \"null\"\n"),
        OnDecryptFailure::Null
    );
    assert_eq!(
        mode("    on_decrypt_failure: keep\n"),
        OnDecryptFailure::Keep
    );
}

#[test]
fn encrypting_route_with_methods_before_a_catch_all_warns() {
    let keys = "keys:\n  active: k1\n  ring:\n    - { id: k1, file: k1.key }\n";
    let text = format!(
        "{MINIMAL}    encrypt: [\"$.ssn\"]\n  - name: rest\n    match: {{ path_prefix: / }}\n    upstream: legacy\n{keys}"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("\"users\"") && c.warnings[0].contains("\"rest\""),
        "{:?}",
        c.warnings
    );
    let without_methods = text.replace(", methods: [GET, POST]", "");
    assert!(load(&without_methods).unwrap().warnings.is_empty());
}

const KEYS: &str = "keys:\n  active: k1\n  ring:\n    - { id: k1, file: k1.key }\n";

#[test]
fn json_references_refused_by_default_allow_warns() {
    let text = format!("{MINIMAL}    encrypt: [\"$.ssn\"]\n{KEYS}");
    let c = load(&text).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let seal = c.routes.routes[0].seal.as_ref().unwrap();
    assert_eq!(
        seal.shape.references,
        crate::transform::JsonReferences::Refuse
    );
    let allow = text.replace(
        "    encrypt: [\"$.ssn\"]\n",
        "    encrypt: [\"$.ssn\"]\n    json_references: allow\n",
    );
    let c = load(&allow).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("json_references: allow"),
        "{:?}",
        c.warnings
    );
    // Only on encrypting routes; only the two words.
    let e = load(&format!("{MINIMAL}    json_references: allow\n")).unwrap_err();
    assert!(e.message.contains("json_references"), "{e}");
    let e = load(&allow.replace("json_references: allow", "json_references: maybe")).unwrap_err();
    assert!(e.message.contains("refuse or allow"), "{e}");
}

#[test]
fn routes_that_seal_or_open_own_every_case_spelling_by_default() {
    let text = format!(
        "{}    encrypt: [\"$.ssn\"]\n  - name: opens\n    match: {{ path_prefix: /api/opens }}\n    upstream: legacy\n    decrypt: [\"$.ssn\"]\n  - name: plain\n    match: {{ path_prefix: /api/plain }}\n    upstream: legacy\n  - name: rest\n    match: {{ path_prefix: / }}\n    upstream: legacy\n{KEYS}",
        MINIMAL.replace(", methods: [GET, POST]", "")
    );
    let c = load(&text).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let ci: Vec<bool> = c.routes.routes.iter().map(|r| r.case_insensitive).collect();
    assert_eq!(ci, [true, true, false, false]);
    // Opting out on an encrypting route with a catch-all behind it warns.
    let opted_out = text.replacen(
        "path_prefix: /api/users }",
        "path_prefix: /api/users, case_insensitive: false }",
        1,
    );
    let c = load(&opted_out).unwrap();
    assert!(!c.routes.routes[0].case_insensitive);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("\"users\"")
            && c.warnings[0].contains("\"rest\"")
            && c.warnings[0].contains("case_insensitive: false"),
        "{:?}",
        c.warnings
    );
    // No warning without a later route to take the other spellings.
    let alone = opted_out.replace(
        "  - name: rest\n    match: { path_prefix: / }\n    upstream: legacy\n",
        "",
    );
    assert!(load(&alone).unwrap().warnings.is_empty());
}

/// `/api` (no rules) before `/api/patients` (encrypt rules): the issue's case.
fn shadowed(first_extra: &str) -> String {
    format!(
        "listen: {{ address: \"127.0.0.1:8443\", tls: {{ cert: c.crt, key: c.key }} }}
upstreams:
  legacy: {{ url: \"http://127.0.0.1:8080\" }}
{KEYS}routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: legacy
{first_extra}  - name: patients
    match: {{ path_prefix: /api/patients }}
    upstream: legacy
    encrypt: [\"$.ssn\"]
    decrypt: [\"$.ssn\"]
"
    )
}

#[test]
fn an_encrypting_route_shadowed_by_an_earlier_route_is_refused_where_it_is_written() {
    let text = shadowed("");
    let e = load(&text).unwrap_err();
    let m = &e.message;
    assert!(
        m.starts_with("routes[0] (api): shadows routes[1] (patients)"),
        "{e}"
    );
    // `patients` owns every case spelling of its path (it seals), the
    // case-sensitive `api` takes the ones it spells.
    assert!(m.contains("some of the requests"), "{e}");
    assert!(m.contains("POST /api/patients"), "{e}");
    let all = load(&text.replace(
        "match: { path_prefix: /api }",
        "match: { path_prefix: /api, case_insensitive: true }",
    ))
    .unwrap_err();
    assert!(all.message.contains("every request"), "{all}");
    assert!(m.contains("($.ssn)") && m.contains("plaintext"), "{e}");
    assert!(m.contains("shadows_ok: [patients]"), "{e}");
    // Located at the earlier route's name, where the fix goes.
    let line = text.lines().position(|l| l.contains("name: api")).unwrap() + 1;
    assert_eq!(e.line, Some(line), "{e}");
}

#[test]
fn an_acknowledged_shadow_loads_and_stays_a_warning() {
    let c = load(&shadowed("    shadows_ok: [patients]\n")).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert!(
        w.contains("routes[0] (api) shadows routes[1] (patients)"),
        "{w}"
    );
    assert!(w.contains("acknowledged"), "{w}");
    assert!(w.contains("$.ssn"), "{w}");
}

#[test]
fn shadows_ok_must_name_a_route_and_a_stale_one_warns() {
    let e = load(&shadowed("    shadows_ok: [patient]\n")).unwrap_err();
    assert!(e.message.contains("routes[0] (api).shadows_ok"), "{e}");
    assert!(
        e.message.contains("\"patient\" is not the name of a route"),
        "{e}"
    );
    assert!(e.line.is_some(), "{e}");

    // The more specific route first: nothing is shadowed, the ack is stale.
    let text = format!(
        "{}    shadows_ok: [api]\n",
        shadowed("").replace("/api/patients", "/other")
    );
    let c = load(&text).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains("does not shadow")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn partial_shadows_by_method_host_or_spelling_are_refused() {
    // Only GET: the answers of GET lose their decrypt rules.
    let e = load(&shadowed("").replace(
        "match: { path_prefix: /api }",
        "match: { path_prefix: /api, methods: [GET] }",
    ))
    .unwrap_err();
    assert!(e.message.contains("the GET requests that route"), "{e}");
    assert!(e.message.contains("decrypt rules"), "{e}");

    // A host-bound earlier route takes the requests on its host.
    let e = load(&shadowed("").replace(
        "match: { path_prefix: /api }",
        "match: { path_prefix: /api, host: a.example }",
    ))
    .unwrap_err();
    assert!(e.message.contains("host a.example"), "{e}");

    // An exact path that is a spelling the later route owns.
    let e = load(&shadowed("").replace(
        "match: { path_prefix: /api }",
        "match: { path: /api/patients.json }",
    ))
    .unwrap_err();
    assert!(e.message.contains("/api/patients.json"), "{e}");

    // A case-insensitive earlier route takes every case.
    let e = load(&shadowed("").replace(
        "match: { path_prefix: /api }",
        "match: { path_prefix: /API, case_insensitive: true }",
    ))
    .unwrap_err();
    assert!(e.message.contains("every request"), "{e}");

    // No overlap: different hosts, different methods.
    let ok = shadowed("")
        .replace(
            "match: { path_prefix: /api }",
            "match: { path_prefix: /api, methods: [GET] }",
        )
        .replace(
            "match: { path_prefix: /api/patients }",
            "match: { path_prefix: /api/patients, methods: [POST] }",
        );
    let c = load(&ok).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn a_decrypting_route_shadowed_by_one_with_other_rules_is_refused() {
    let text = shadowed("    decrypt: [\"$.card\"]\n").replace("    encrypt: [\"$.ssn\"]\n", "");
    let e = load(&text).unwrap_err();
    assert!(e.message.contains("decrypt rules"), "{e}");
    assert!(!e.message.contains("plaintext"), "{e}");
}

#[test]
fn every_unacknowledged_shadow_is_counted() {
    let text = format!(
        "{}  - name: records\n    match: {{ path_prefix: /api/records }}\n    upstream: legacy\n    encrypt: [\"$.dob\"]\n",
        shadowed("")
    );
    let e = load(&text).unwrap_err();
    assert!(
        e.message
            .contains("1 more unacknowledged shadow: routes[0] (api) shadows routes[2] (records)"),
        "{e}"
    );
}

#[test]
fn a_route_without_rules_that_never_matches_warns() {
    let text = format!(
        "{MINIMAL}  - name: dead\n    match: {{ path_prefix: /api/users/admin, methods: [GET] }}\n    upstream: legacy\n"
    );
    let c = load(&text).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("routes[1] (dead) never matches")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn a_listener_that_is_also_an_upstream_is_refused() {
    // The example config's old redirect_http: 0.0.0.0:8080 and the upstream
    // on 127.0.0.1:8080, so a request redirected to itself.
    let text = format!("{MINIMAL}redirect_http: {{ address: \"0.0.0.0:8080\" }}\n");
    let e = load(&text).unwrap_err();
    assert!(
        e.message.starts_with("redirect_http.address: 0.0.0.0:8080"),
        "{e}"
    );
    assert!(e.message.contains("upstream \"legacy\""), "{e}");
    assert_eq!(e.line, Some(text.lines().count()), "{e}");

    let e = load(&MINIMAL.replace("127.0.0.1:8080", "localhost:8443")).unwrap_err();
    assert!(e.message.starts_with("listen.address"), "{e}");
    // The admin default (127.0.0.1:9901) is not written: no line, but said.
    let e = load(&MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:9901")).unwrap_err();
    assert!(e.message.starts_with("admin.address"), "{e}");
    assert!(e.message.contains("default"), "{e}");
    assert_eq!(e.line, None);
    // Two listeners on one socket.
    let e = load(&format!(
        "{MINIMAL}admin: {{ address: \"0.0.0.0:8443\" }}\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("cannot bind"), "{e}");
    // A name is not resolved, and another port is fine.
    load(&MINIMAL.replace("127.0.0.1:8080", "legacy.internal:8443")).unwrap();
    load(&format!(
        "{MINIMAL}redirect_http: {{ address: \"0.0.0.0:8081\" }}\n"
    ))
    .unwrap();
}

#[test]
fn connection_deadlines_and_buffer_budgets_have_defaults_and_are_checked() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.send_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.max_connection_age, Duration::from_secs(3600));
    assert_eq!(c.limits.connection_drain_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.max_buffered_per_connection, 32 << 20);
    assert_eq!(c.limits.max_buffered_total, 512 << 20);
    let with = |limits: &str| load(&format!("{MINIMAL}limits: {{ {limits} }}\n"));
    let c = with(
        "idle_timeout: 5s, send_timeout: 2s, max_connection_age: 10m, connection_drain_timeout: 1s",
    )
    .unwrap();
    assert_eq!(c.limits.max_connection_age, Duration::from_secs(600));
    for zero in [
        "idle_timeout",
        "send_timeout",
        "max_connection_age",
        "connection_drain_timeout",
    ] {
        assert!(with(&format!("{zero}: 0s")).is_err(), "{zero} = 0");
    }
    // A budget that could never hold one buffered answer, or one
    // connection's budget larger than the process's, is refused.
    let e = with("max_buffered_per_connection: 1MiB").unwrap_err();
    assert!(e.message.contains("max_buffered_per_connection"), "{e}");
    let e = with("max_buffered_total: 16MiB").unwrap_err();
    assert!(e.message.contains("max_buffered_total"), "{e}");
    assert!(with(
        "max_response_body: 1MiB, max_buffered_per_connection: 2MiB, max_buffered_total: 2MiB"
    )
    .is_ok());
}

#[test]
fn a_host_bound_encrypting_route_with_a_host_less_catch_all_behind_it_warns() {
    let keys = "keys:\n  active: k1\n  ring:\n    - { id: k1, file: k1.key }\n";
    let text = format!(
        "{}    encrypt: [\"$.ssn\"]\n  - name: rest\n    match: {{ path_prefix: / }}\n    upstream: legacy\n{keys}",
        MINIMAL.replace(", methods: [GET, POST]", ", host: api.example.com")
    );
    let c = load(&text).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("\"users\" encrypts only for host \"api.example.com\"")
            && c.warnings[0].contains("\"rest\""),
        "{:?}",
        c.warnings
    );
    // Behind a host-bound catch-all, or one that seals too: not this
    // warning (the second is a shadow, acknowledged here with shadows_ok).
    let fallthrough = |c: &Config| {
        c.warnings
            .iter()
            .any(|w| w.contains("encrypts only for host"))
    };
    let bound = text.replace(
        "path_prefix: / }",
        "path_prefix: /, host: api.example.com }",
    );
    assert!(!fallthrough(&load(&bound).unwrap()));
    let sealed = format!("{}    encrypt: [\"$.ssn\"]\n", text.trim_end_matches(keys)).replacen(
        "    upstream: legacy\n    encrypt",
        "    upstream: legacy\n    shadows_ok: [rest]\n    encrypt",
        1,
    ) + keys;
    let c = load(&sealed).unwrap();
    assert!(!fallthrough(&c), "{:?}", c.warnings);
}

/// Errors are located by the parser's marks of the node they are about, not
/// by the first place its text appears (the old text search put both of
/// these on the wrong line).
#[test]
fn errors_point_at_their_own_node_even_when_the_same_text_comes_first() {
    let text = "\
listen: { address: \"0.0.0.0:8443\", tls: { cert: c.crt, key: c.key } }
upstreams:
  soon: { url: \"http://127.0.0.1:8080\" }
redirect_http: { address: \"0.0.0.0:8443\" }
routes:
  - name: users
    match: { path_prefix: /api/users }
    upstream: soon
";
    let e = load(text).unwrap_err();
    assert!(e.message.starts_with("redirect_http.address"), "{e}");
    assert_eq!((e.line, e.column), (Some(4), Some(27)), "{e}");

    let text =
        text.replace("redirect_http: { address: \"0.0.0.0:8443\" }\n", "") + "    max_age: soon\n";
    let e = load(&text).unwrap_err();
    assert!(e.message.starts_with("routes[0] (users).max_age"), "{e}");
    assert_eq!(e.line, Some(text.lines().count()), "{e}");
}

#[test]
fn the_per_client_connection_share_defaults_below_the_total_and_is_checked() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_connections_per_client, 256);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let with = |limits: &str| load(&format!("{MINIMAL}limits: {limits}\n"));
    let c = with("{ max_connections: 8 }").unwrap();
    assert_eq!(c.limits.max_connections_per_client, 2);
    assert_eq!(
        with("{ max_connections: 1 }")
            .unwrap()
            .limits
            .max_connections_per_client,
        1
    );
    for bad in [
        "{ max_connections: 8, max_connections_per_client: 9 }",
        "{ max_connections: 8, max_connections_per_client: 0 }",
        "{ max_connections: 0 }",
    ] {
        let e = with(bad).unwrap_err();
        assert!(e.message.contains("max_connections"), "{bad}: {e}");
    }
    let all = with("{ max_connections: 8, max_connections_per_client: 8 }").unwrap();
    assert!(
        all.warnings
            .iter()
            .any(|w| w.contains("max_connections_per_client")),
        "{:?}",
        all.warnings
    );
}

#[test]
fn full_paths_in_the_access_log_are_a_warning() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.log.paths, LogPaths::Pattern);
    let full = load(&format!("{MINIMAL}log: {{ paths: full }}\n")).unwrap();
    assert_eq!(full.log.paths, LogPaths::Full);
    assert!(
        full.warnings.iter().any(|w| w.contains("log.paths: full")),
        "{:?}",
        full.warnings
    );
    let e = load(&format!("{MINIMAL}log: {{ paths: everything }}\n")).unwrap_err();
    assert!(e.message.contains("pattern or full"), "{e}");
}

#[test]
fn trusted_networks_wider_than_a_slash_8_are_a_warning() {
    let with = |list: &str| load(&format!("{MINIMAL}trusted_proxies: {list}\n")).unwrap();
    assert!(with("[10.0.0.0/8, \"fd00::/32\", 192.0.2.7]")
        .warnings
        .is_empty());
    for wide in [
        "[0.0.0.0/0]",
        "[\"::/0\"]",
        "[10.0.0.1, 8.0.0.0/7]",
        "[\"2000::/3\"]",
    ] {
        let c = with(wide);
        assert!(
            c.warnings.iter().any(|w| w.contains("trusted_proxies[")),
            "{wide}: {:?}",
            c.warnings
        );
    }
}

#[test]
fn a_route_names_its_store_and_inherits_the_rest_of_the_global_limit() {
    use crate::ratelimit::{LimitStore, OnStoreError};
    let text = format!(
        "{MINIMAL}    rate_limit: {{ store: redis }}\nredis: {{ url_env: FIELDSEAL_REDIS_URL }}\nrate_limit: {{ requests_per_second: 100, burst: 200, on_store_error: deny }}\n"
    );
    let c = load(&text).unwrap();
    let global = c.rate_limit.default.unwrap();
    assert_eq!(global.store, LimitStore::Local, "local is the default");
    let own = c.routes.routes[0].rate_limit.unwrap();
    assert_eq!(own.store, LimitStore::Redis);
    assert_eq!(own.on_store_error, OnStoreError::Deny, "inherited");
    assert_eq!((own.requests_per_second.get(), own.burst.get()), (100, 200));
    let r = c.redis.unwrap();
    assert_eq!(r.timeout, std::time::Duration::from_millis(5));
    assert_eq!(r.key_prefix, "fieldseal:rl:");
}

#[test]
fn key_store_names_one_store_and_refuses_passwords_and_unbounded_timeouts() {
    let keys = "keys:\n  active: k1\n  ring:\n    - { id: k1, file: keys/k1.key }\n";
    let with = |store: &str| load(&format!("{MINIMAL}{keys}key_store:\n{store}"));
    let pg = with("  postgres_url_env: FIELDSEAL_PG_URL\n").unwrap();
    match pg.key_store.unwrap().backend {
        KeyStoreBackend::Postgres(p) => {
            assert_eq!(p.url, PostgresUrl::Env("FIELDSEAL_PG_URL".into()));
            assert_eq!(p.pool_max, 8);
            assert_eq!(p.connect_timeout, Duration::from_secs(2));
            assert_eq!(p.statement_timeout, Duration::from_secs(2));
        }
        other => panic!("{other:?}"),
    }
    let file =
        with("  postgres_url_file: secrets/pg-url\n  ca: pg-ca.pem\n  pool_max: 4\n").unwrap();
    match file.key_store.unwrap().backend {
        KeyStoreBackend::Postgres(p) => {
            assert_eq!(
                p.url,
                PostgresUrl::File("/etc/fieldseal/secrets/pg-url".into())
            );
            assert_eq!(p.ca, Some("/etc/fieldseal/pg-ca.pem".into()));
            assert_eq!(p.pool_max, 4);
        }
        other => panic!("{other:?}"),
    }
    for (store, says) in [
        ("  sqlite: k.db\n  postgres_url_env: X\n", "not both"),
        ("  postgres_url_env: X\n  postgres_url_file: f\n", "one of"),
        ("  sqlite: k.db\n  pool_max: 3\n", "PostgreSQL settings"),
        ("  postgres_url: \"postgres://u:pw@db/fs\"\n", "password"),
        (
            "  postgres_url: \"postgres://u@db/fs?password=pw\"\n",
            "password",
        ),
        (
            "  postgres_url: \"host=db user=u password=pw\"\n",
            "password",
        ),
        ("  postgres_url: \"nonsense\"\n", "PostgreSQL URL"),
        ("  postgres_url_env: \"A=B\"\n", "environment variable"),
        (
            "  postgres_url_env: X\n  statement_timeout: 30s\n",
            "at most 10s",
        ),
        (
            "  postgres_url_env: X\n  connect_timeout: 0s\n",
            "more than 0",
        ),
        ("  postgres_url_env: X\n  pool_max: 0\n", "1 to 64"),
        ("  postgres_url_env: X\n  pool_max: 500\n", "1 to 64"),
        ("  cache_ttl: 5s\n", "name the store"),
    ] {
        let e = with(store).expect_err(store);
        assert!(e.message.contains(says), "{store}: {e}");
        assert!(
            !e.to_string().contains("pw@") && !e.to_string().contains("=pw"),
            "{e}"
        );
    }
    let inline = with("  postgres_url: \"postgres://fieldseal@db:5432/fs?sslmode=require\"\n");
    assert!(inline.is_ok(), "{inline:?}");
}

#[test]
fn the_connection_cap_has_a_bounded_default_and_is_checked_against_the_pool_and_timeout() {
    let u = &load(MINIMAL).unwrap().upstreams[0];
    assert_eq!(u.max_connections, 256);
    assert_eq!(u.pool_max_idle_per_host, 256);
    assert_eq!(u.queue_timeout, Duration::from_secs(1));
    assert_eq!(u.max_queued, 256);
    let with = |extra: &str| {
        load(&MINIMAL.replace(
            "connect_timeout: 2s,",
            &format!("connect_timeout: 2s, {extra},"),
        ))
    };
    let u = &with("max_connections: 8").unwrap().upstreams[0];
    assert_eq!(
        (u.max_connections, u.pool_max_idle_per_host, u.max_queued),
        (8, 8, 8)
    );
    for (extra, key) in [
        ("max_connections: 0", "max_connections"),
        (
            "max_connections: 8, pool_max_idle_per_host: 9",
            "pool_max_idle_per_host",
        ),
        ("queue_timeout: 0s", "queue_timeout"),
        ("queue_timeout: 30s", "queue_timeout"),
    ] {
        let e = with(extra).unwrap_err();
        assert!(e.message.contains(key), "{extra}: {e}");
    }
    let u = &with("max_queued: 0, queue_timeout: 50ms")
        .unwrap()
        .upstreams[0];
    assert_eq!(
        (u.max_queued, u.queue_timeout),
        (0, Duration::from_millis(50))
    );
}

#[test]
fn active_health_checks_load_with_their_defaults_and_need_a_path() {
    let with = |health: &str| {
        load(&MINIMAL.replace(
            "connect_timeout: 2s,",
            &format!("connect_timeout: 2s, health: {health},"),
        ))
    };
    let u = &with("{ fails: 2, path: /healthz }").unwrap().upstreams[0];
    let check = u.health.check.as_ref().expect("a check");
    assert_eq!(check.path.as_str(), "/healthz");
    assert_eq!(check.interval, Duration::from_secs(5));
    assert_eq!(check.timeout, Duration::from_secs(2));
    let u = &with("{ path: \"/h?x=1\", interval: 500ms }")
        .unwrap()
        .upstreams[0];
    let check = u.health.check.as_ref().expect("a check");
    assert_eq!(
        check.timeout,
        Duration::from_millis(500),
        "at most the interval"
    );
    for (health, key) in [
        ("{ interval: 5s }", "interval"),
        ("{ timeout: 1s }", "timeout"),
        ("{ path: healthz }", "path"),
        ("{ path: /h, interval: 10ms }", "interval"),
        ("{ path: /h, timeout: 0s }", "timeout"),
    ] {
        let e = with(health).unwrap_err();
        assert!(e.message.contains(key), "{health}: {e}");
    }
}
