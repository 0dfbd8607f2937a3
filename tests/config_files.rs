//! Every config file we ship must compile with the real config loader, so
//! the docs can't drift from the code.
use std::path::Path;

use fieldseal::config::{preflight, Config};

#[test]
fn example_config_is_valid() {
    let c = Config::load(Path::new("config/example.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.keys.is_some());
    assert!(c.audit.is_some());
    let users = c.routes.by_name("users").expect("users route");
    assert_eq!(users.encrypt_rules().len(), 4);
    assert_eq!(users.seal.as_ref().map(|s| s.indexes.len()), Some(1));
    assert_eq!(users.query.as_ref().map(|q| q.rules().len()), Some(2));
    assert!(users.transforms_response());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

/// The example names files and variables of a production host, which this
/// repository does not have: `check` (which opens them by default) refuses
/// it here, naming each one with its key and line, and nothing else. So the
/// example is checked with `--no-load` (the test above), and a generated
/// config is loaded end to end below.
#[test]
fn example_config_names_only_production_files_and_variables() {
    let path = Path::new("config/example.yaml");
    let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(path).expect("example");
    if std::env::var_os("FIELDSEAL_K1").is_some() {
        return; // someone's real passphrase variable: the census below would differ
    }
    let report = preflight::check(&c);
    let keys: Vec<String> = report
        .errors
        .iter()
        .map(|e| {
            assert!(e.line.is_some(), "{e}");
            let line = text.lines().nth(e.line.unwrap() - 1).unwrap_or_default();
            let key = e.message.split(": ").next().unwrap_or_default().to_string();
            let leaf = key.rsplit('.').next().unwrap_or_default();
            assert!(line.contains(&format!("{leaf}:")), "{e} points at {line:?}");
            key
        })
        .collect();
    assert_eq!(
        keys,
        [
            "listen.tls.cert",
            "listen.tls.key",
            "keys.ring[0] (k1).passphrase_env",
            "keys.ring[1] (k2).file"
        ],
        "{:?}",
        report.errors
    );
}

/// What `fieldseal init` writes is a config `check` and `run` accept with
/// its files: certificates and keys loaded as the proxy loads them.
#[test]
fn generated_starter_config_loads_with_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = fieldseal::init::Options {
        listen: "127.0.0.1:8443".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        upstream: "http://127.0.0.1:8080".into(),
    };
    fieldseal::init::write(dir.path(), &opts).expect("init");
    let c = Config::load(&dir.path().join(fieldseal::init::CONFIG_FILE))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = preflight::check(&c);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    fieldseal::Proxy::new(c).expect("certificates and keys load");
}

#[test]
fn kubernetes_configmap_config_is_valid() {
    let text = std::fs::read_to_string("deploy/kubernetes/configmap.yaml").expect("configmap");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let embedded = doc["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml");
    let c = Config::from_yaml(embedded, Path::new("/etc/fieldseal/config.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.map(|a| a.port()), Some(9901));
}

#[test]
fn docker_config_is_valid() {
    let c = Config::load(Path::new("deploy/docker/config.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

/// The committed schema is what `fieldseal config-schema` prints.
#[test]
fn committed_json_schema_is_up_to_date() {
    let committed = std::fs::read_to_string("config/fieldseal.schema.json").expect("schema");
    let generated = format!("{}\n", fieldseal::config::schema_json());
    assert!(
        committed == generated,
        "config/fieldseal.schema.json is stale: regenerate it with\n  cargo run -- config-schema > config/fieldseal.schema.json"
    );
}

/// The schema describes the file the loader reads: every top-level and
/// route key of the example is in it, unknown keys are refused, and the
/// acknowledgement key is documented.
#[test]
fn json_schema_matches_the_config_shape() {
    let schema: serde_json::Value =
        serde_json::from_str(&fieldseal::config::schema_json()).expect("json");
    let example: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string("config/example.yaml").unwrap())
            .expect("yaml");
    let props = &schema["properties"];
    assert_eq!(schema["additionalProperties"], false);
    for (k, _) in example.as_mapping().expect("mapping") {
        let k = k.as_str().expect("key");
        assert!(props.get(k).is_some(), "schema lacks top-level {k}");
    }
    let route = &schema["$defs"]["RawRoute"];
    assert_eq!(route["additionalProperties"], false);
    for r in example["routes"].as_sequence().expect("routes") {
        for (k, _) in r.as_mapping().expect("route") {
            let k = k.as_str().expect("key");
            assert!(
                route["properties"].get(k).is_some(),
                "schema lacks routes[].{k}"
            );
        }
    }
    let ack = route["properties"]["shadows_ok"]["description"]
        .as_str()
        .expect("shadows_ok is described");
    assert!(ack.contains("later"), "{ack}");
}
