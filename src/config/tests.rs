use super::*;

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
    use crate::fields::OnDecryptFailure;
    let keys = "keys:\n  active: k1\n  ring:\n    - { id: k1, file: k1.key }\n";
    let mode = |line: &str| {
        let text = format!("{MINIMAL}    decrypt: auto\n{line}{keys}");
        load(&text).unwrap().routes.routes[0].on_decrypt_failure
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
