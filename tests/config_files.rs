//! Every config file we ship must compile with the real config loader, so
//! the docs can't drift from the code.
use std::path::Path;

use fieldseal::config::Config;

#[test]
fn example_config_is_valid() {
    let c = Config::load(Path::new("config/example.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.keys.is_some());
    assert!(c.audit.is_some());
    let users = c.routes.by_name("users").expect("users route");
    assert_eq!(users.encrypt.len(), 3);
    assert!(users.transforms_response());
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
