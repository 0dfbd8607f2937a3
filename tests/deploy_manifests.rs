//! Checks on the deployment files that matter at runtime: probes on the admin
//! port the config really uses, non-root and read-only containers, key file
//! modes fieldseal accepts, selectors that match, systemd hardening, and no
//! secrets in the image. Each checker is also run against a broken copy to
//! show it can fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_yaml_ng::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of a file (multi-document aware).
fn parse_docs(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(Value::deserialize)
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// (file name, document) for every document under deploy/kubernetes/.
fn kube_docs() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected at least 5 manifests, got {files:?}"
    );
    let mut docs = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = parse_docs(&read(&f)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!parsed.is_empty(), "{name} has no documents");
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    docs
}

/// Walks a dotted path; numeric segments index sequences.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |cur, seg| match seg.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(seg),
        })
}

fn str_at<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    at(v, path)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string at {path}"))
}

fn seq_at<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, String> {
    at(v, path)
        .and_then(Value::as_sequence)
        .ok_or_else(|| format!("missing list at {path}"))
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn one_of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d.get("kind").and_then(Value::as_str) == Some(kind))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

/// The proxy config embedded in the ConfigMap.
fn proxy_config(docs: &[(String, Value)]) -> Value {
    let cm = one_of_kind(docs, "ConfigMap");
    // The key contains a dot, so `at` cannot walk to it.
    let text = cm
        .get("data")
        .and_then(|d| d.get("config.yaml"))
        .and_then(Value::as_str)
        .expect("ConfigMap has data.\"config.yaml\"");
    serde_yaml_ng::from_str(text).unwrap()
}

fn port_of(address: &str) -> Result<u64, String> {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| format!("no port in address {address:?}"))
}

fn duration_at(v: &Value, path: &str) -> Result<Duration, String> {
    humantime::parse_duration(str_at(v, path)?).map_err(|e| format!("{path}: {e}"))
}

fn main_container(deploy: &Value) -> Result<&Value, String> {
    seq_at(deploy, "spec.template.spec.containers")?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("fieldseal"))
        .ok_or_else(|| "no container named fieldseal".into())
}

/// A probe/Service port: a number, or a container port name resolved.
fn resolve_port(container: &Value, port: &Value) -> Result<u64, String> {
    if let Some(n) = port.as_u64() {
        return Ok(n);
    }
    let name = port.as_str().ok_or("port is neither number nor name")?;
    seq_at(container, "ports")?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no container port named {name:?}"))
}

fn check_common_fields(docs: &[(String, Value)]) -> Result<(), String> {
    for (file, d) in docs {
        for path in ["apiVersion", "kind", "metadata.name"] {
            let s = str_at(d, path).map_err(|e| format!("{file}: {e}"))?;
            if s.is_empty() {
                return Err(format!("{file}: empty {path}"));
            }
        }
    }
    Ok(())
}

fn check_probes(docs: &[(String, Value)]) -> Result<(), String> {
    let cfg = proxy_config(docs);
    let admin_address = str_at(&cfg, "admin.address")?;
    if !admin_address.starts_with("0.0.0.0:") && !admin_address.starts_with("[::]:") {
        return Err(format!(
            "admin.address {admin_address:?} must listen on all interfaces for the kubelet's probes"
        ));
    }
    let admin_port = port_of(admin_address)?;
    let deploy = one_of_kind(docs, "Deployment");
    let c = main_container(deploy)?;
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let p = c.get(probe).ok_or_else(|| format!("no {probe}"))?;
        let got = str_at(p, "httpGet.path")?;
        if got != path {
            return Err(format!("{probe} path {got:?}, want {path:?}"));
        }
        let port = resolve_port(c, at(p, "httpGet.port").ok_or("probe without port")?)?;
        if port != admin_port {
            return Err(format!(
                "{probe} on port {port}, admin listens on {admin_port}"
            ));
        }
    }
    if let Some(p) = c.get("startupProbe") {
        let port = resolve_port(c, at(p, "httpGet.port").ok_or("probe without port")?)?;
        if port != admin_port {
            return Err(format!(
                "startupProbe on port {port}, admin on {admin_port}"
            ));
        }
    }
    Ok(())
}

fn check_container_security(name: &str, c: &Value, pod: &Value) -> Result<(), String> {
    let flag = |path: &str| at(c, path).and_then(Value::as_bool);
    let pod_flag = |path: &str| at(pod, path).and_then(Value::as_bool);
    let non_root = flag("securityContext.runAsNonRoot")
        .or_else(|| pod_flag("securityContext.runAsNonRoot"))
        .unwrap_or(false);
    let uid = at(c, "securityContext.runAsUser")
        .or_else(|| at(pod, "securityContext.runAsUser"))
        .and_then(Value::as_u64);
    if !non_root || uid == Some(0) {
        return Err(format!("{name}: must run as non-root"));
    }
    if flag("securityContext.readOnlyRootFilesystem") != Some(true) {
        return Err(format!("{name}: readOnlyRootFilesystem must be true"));
    }
    if flag("securityContext.allowPrivilegeEscalation") != Some(false) {
        return Err(format!("{name}: allowPrivilegeEscalation must be false"));
    }
    if flag("securityContext.privileged") == Some(true) {
        return Err(format!("{name}: privileged"));
    }
    let drops =
        seq_at(c, "securityContext.capabilities.drop").map_err(|e| format!("{name}: {e}"))?;
    if !drops.iter().any(|d| d.as_str() == Some("ALL")) {
        return Err(format!("{name}: must drop ALL capabilities"));
    }
    if at(c, "securityContext.capabilities.add").is_some() {
        return Err(format!("{name}: adds capabilities"));
    }
    Ok(())
}

fn check_security(docs: &[(String, Value)]) -> Result<(), String> {
    let deploy = one_of_kind(docs, "Deployment");
    let pod = at(deploy, "spec.template.spec").ok_or("no pod spec")?;
    check_container_security("fieldseal", main_container(deploy)?, pod)?;
    for c in at(pod, "initContainers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        check_container_security(str_at(c, "name")?, c, pod)?;
    }
    if at(pod, "automountServiceAccountToken").and_then(Value::as_bool) != Some(false) {
        return Err("automountServiceAccountToken must be false".into());
    }
    Ok(())
}

fn is_owner_only(mode: Option<u64>) -> bool {
    matches!(mode, Some(256 | 384))
}

fn volume<'a>(pod: &'a Value, name: &str) -> Result<&'a Value, String> {
    seq_at(pod, "volumes")?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| format!("no volume {name:?}"))
}

/// Every key/cert file the config names lives under a read-only mount whose
/// files fieldseal will accept: a Secret volume with defaultMode 0400/0600,
/// or a memory emptyDir that an init container fills from such a Secret and
/// chmods to 0400/0600 (needed when fsGroup makes Secret files 0440).
fn check_key_volumes(docs: &[(String, Value)]) -> Result<(), String> {
    let cfg = proxy_config(docs);
    let mut files = vec![
        str_at(&cfg, "listen.tls.cert")?.to_owned(),
        str_at(&cfg, "listen.tls.key")?.to_owned(),
    ];
    for k in seq_at(&cfg, "keys.ring")? {
        if let Some(f) = k.get("file").and_then(Value::as_str) {
            files.push(f.to_owned());
        }
    }
    let deploy = one_of_kind(docs, "Deployment");
    let pod = at(deploy, "spec.template.spec").ok_or("no pod spec")?;
    let c = main_container(deploy)?;
    let mounts = seq_at(c, "volumeMounts")?;
    let mut secret_volumes = 0;
    for file in &files {
        let m = mounts
            .iter()
            .filter(|m| {
                m.get("mountPath")
                    .and_then(Value::as_str)
                    .is_some_and(|p| file.starts_with(&format!("{}/", p.trim_end_matches('/'))))
            })
            .max_by_key(|m| m.get("mountPath").and_then(Value::as_str).map(str::len))
            .ok_or_else(|| format!("{file}: no volume mounted over it"))?;
        if m.get("readOnly").and_then(Value::as_bool) != Some(true) {
            return Err(format!("{file}: key mount must be readOnly"));
        }
        let vol = volume(pod, str_at(m, "name")?)?;
        if let Some(secret) = vol.get("secret") {
            if !is_owner_only(secret.get("defaultMode").and_then(Value::as_u64)) {
                return Err(format!("{file}: secret defaultMode must be 0400 or 0600"));
            }
            secret_volumes += 1;
        } else if let Some(dir) = vol.get("emptyDir") {
            if dir.get("medium").and_then(Value::as_str) != Some("Memory") {
                return Err(format!("{file}: key emptyDir must be memory-backed"));
            }
            let vol_name = str_at(vol, "name")?;
            let filler = seq_at(pod, "initContainers")?
                .iter()
                .find(|ic| {
                    seq_at(ic, "volumeMounts").is_ok_and(|ms| {
                        ms.iter()
                            .any(|m| m.get("name").and_then(Value::as_str) == Some(vol_name))
                    })
                })
                .ok_or_else(|| format!("{file}: no init container fills {vol_name}"))?;
            let script = serde_yaml_ng::to_string(filler.get("command").ok_or("no command")?)
                .map_err(|e| e.to_string())?;
            if !script.contains("chmod 0400") && !script.contains("chmod 0600") {
                return Err(format!(
                    "{file}: init container must chmod keys to 0400/0600"
                ));
            }
            for fm in seq_at(filler, "volumeMounts")? {
                let v = volume(pod, str_at(fm, "name")?)?;
                if let Some(secret) = v.get("secret") {
                    if !is_owner_only(secret.get("defaultMode").and_then(Value::as_u64)) {
                        return Err("source secret defaultMode must be 0400 or 0600".into());
                    }
                    secret_volumes += 1;
                }
            }
        } else {
            return Err(format!("{file}: key volume is neither Secret nor emptyDir"));
        }
    }
    if secret_volumes == 0 {
        return Err("keys do not come from a Secret".into());
    }
    // Passphrase-derived keys: their env vars come from a Secret.
    let env = at(c, "env").and_then(Value::as_sequence);
    for k in seq_at(&cfg, "keys.ring")? {
        for var_key in ["passphrase_env", "salt_env"] {
            let Some(var) = k.get(var_key).and_then(Value::as_str) else {
                continue;
            };
            let from_secret = env.into_iter().flatten().any(|e| {
                e.get("name").and_then(Value::as_str) == Some(var)
                    && at(e, "valueFrom.secretKeyRef.name").is_some()
            });
            if !from_secret {
                return Err(format!("env {var} must come from a secretKeyRef"));
            }
        }
    }
    Ok(())
}

fn check_shutdown(docs: &[(String, Value)]) -> Result<(), String> {
    let grace = duration_at(&proxy_config(docs), "shutdown.grace_period")?;
    let deploy = one_of_kind(docs, "Deployment");
    let termination = at(deploy, "spec.template.spec.terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .ok_or("no terminationGracePeriodSeconds")?;
    // A preStop sleep spends part of the termination budget first.
    let pre_stop = at(main_container(deploy)?, "lifecycle.preStop.exec.command")
        .and_then(Value::as_sequence)
        .and_then(|cmd| cmd.last()?.as_str()?.parse::<u64>().ok())
        .unwrap_or(0);
    if termination <= grace.as_secs() + pre_stop {
        return Err(format!(
            "terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop}s + grace {}s",
            grace.as_secs()
        ));
    }
    if at(deploy, "spec.replicas").and_then(Value::as_u64) != Some(3) {
        return Err("replicas must be 3".into());
    }
    Ok(())
}

fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

fn check_selectors(docs: &[(String, Value)]) -> Result<(), String> {
    let deploy = one_of_kind(docs, "Deployment");
    let pod_labels = labels(at(deploy, "spec.template.metadata.labels"));
    if !selects(
        &labels(at(deploy, "spec.selector.matchLabels")),
        &pod_labels,
    ) {
        return Err("Deployment selector does not match its pod labels".into());
    }
    let pdb = one_of_kind(docs, "PodDisruptionBudget");
    if !selects(&labels(at(pdb, "spec.selector.matchLabels")), &pod_labels) {
        return Err("PDB does not select the Deployment's pods".into());
    }
    let min = at(pdb, "spec.minAvailable").and_then(Value::as_u64);
    let max = at(pdb, "spec.maxUnavailable").and_then(Value::as_u64);
    if !(min == Some(2) || max == Some(1)) {
        return Err("PDB must keep minAvailable 2 or maxUnavailable 1".into());
    }
    let svc = one_of_kind(docs, "Service");
    if !selects(&labels(at(svc, "spec.selector")), &pod_labels) {
        return Err("Service does not select the Deployment's pods".into());
    }
    let c = main_container(deploy)?;
    let https = resolve_port(c, &Value::String("https".into()))?;
    let listen = port_of(str_at(&proxy_config(docs), "listen.address")?)?;
    if https != listen {
        return Err(format!(
            "container https port {https} != listen port {listen}"
        ));
    }
    let ports = seq_at(svc, "spec.ports")?;
    let mut targets = Vec::new();
    for p in ports {
        let t = p
            .get("targetPort")
            .ok_or("service port without targetPort")?;
        targets.push(resolve_port(c, t)?);
    }
    if !targets.contains(&https) {
        return Err(format!(
            "Service targets {targets:?}, not the https port {https}"
        ));
    }
    let admin = port_of(str_at(&proxy_config(docs), "admin.address")?)?;
    if targets.contains(&admin) {
        return Err("Service must not expose the admin port".into());
    }
    Ok(())
}

fn check_secret_placeholders(docs: &[(String, Value)]) -> Result<(), String> {
    for (file, d) in docs {
        if d.get("kind").and_then(Value::as_str) != Some("Secret") {
            continue;
        }
        if !file.contains("example") {
            return Err(format!("{file}: Secrets belong only in *.example.yaml"));
        }
        let data = d
            .get("data")
            .and_then(Value::as_mapping)
            .ok_or("Secret without data")?;
        if at(d, "stringData").is_some() {
            return Err(format!("{file}: use base64 placeholders in data"));
        }
        for (k, v) in data {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or("non-string secret value")?)
                .map_err(|e| format!("{file}: {k:?}: {e}"))?;
            if raw != b"REPLACE_ME" {
                return Err(format!("{file}: {k:?} is not the REPLACE_ME placeholder"));
            }
        }
    }
    Ok(())
}

/// key -> values of a systemd unit (repeated keys accumulate).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    out
}

fn check_systemd(text: &str, grace: Duration) -> Result<(), String> {
    let s = unit_settings(text);
    let one = |k: &str| -> Result<&str, String> {
        s.get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
            .ok_or_else(|| format!("unit lacks {k}="))
    };
    let yes = |k: &str| -> Result<(), String> {
        match one(k)? {
            "yes" | "true" | "1" | "on" => Ok(()),
            other => Err(format!("{k}={other}, want yes")),
        }
    };
    if yes("DynamicUser").is_err() && s.get("User").is_none_or(|u| u.iter().any(|u| u == "root")) {
        return Err("needs DynamicUser=yes or a dedicated User=".into());
    }
    for k in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "MemoryDenyWriteExecute",
    ] {
        yes(k)?;
    }
    if one("ProtectSystem")? != "strict" {
        return Err("ProtectSystem must be strict".into());
    }
    let caps = one("CapabilityBoundingSet")?;
    if !(caps.is_empty() || caps == "CAP_NET_BIND_SERVICE") {
        return Err(format!("CapabilityBoundingSet={caps} grants too much"));
    }
    let mut families: Vec<&str> = one("RestrictAddressFamilies")?.split_whitespace().collect();
    families.sort_unstable();
    if families != ["AF_INET", "AF_INET6", "AF_UNIX"] {
        return Err(format!("RestrictAddressFamilies={families:?}"));
    }
    if !s.get("SystemCallFilter").is_some_and(|v| {
        v.iter()
            .any(|f| f.split_whitespace().any(|x| x == "@system-service"))
    }) {
        return Err("SystemCallFilter must include @system-service".into());
    }
    if s.get("LoadCredential").is_none_or(Vec::is_empty) {
        return Err("keys/certs must come in through LoadCredential=".into());
    }
    if one("ExecReload")? != "/bin/kill -HUP $MAINPID" {
        return Err("ExecReload must send SIGHUP to $MAINPID".into());
    }
    if one("Restart")? != "on-failure" {
        return Err("Restart must be on-failure".into());
    }
    let stop = humantime::parse_duration(one("TimeoutStopSec")?)
        .map_err(|e| format!("TimeoutStopSec: {e}"))?;
    if stop <= grace {
        return Err(format!(
            "TimeoutStopSec {stop:?} must exceed grace {grace:?}"
        ));
    }
    if !one("ExecStart")?.contains("run --config /etc/fieldseal/config.yaml") {
        return Err("ExecStart must run with /etc/fieldseal/config.yaml".into());
    }
    Ok(())
}

/// Instructions of a Dockerfile, continuation lines joined.
fn docker_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') && cur.is_empty() {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let full = std::mem::take(&mut cur);
        if let Some((op, rest)) = full.trim().split_once(char::is_whitespace) {
            out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
        }
    }
    out
}

fn check_dockerfile(text: &str, dockerignore: &str) -> Result<(), String> {
    let ins = docker_instructions(text);
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    if froms.len() < 2 {
        return Err("must be multi-stage".into());
    }
    let builder = &ins[froms[0]].1;
    if !builder.starts_with("rust:") {
        return Err(format!("builder stage is {builder:?}"));
    }
    if !ins
        .iter()
        .any(|(op, a)| op == "RUN" && a.contains("cargo build --release --locked"))
    {
        return Err("must build with cargo build --release --locked".into());
    }
    let runtime = &ins[*froms.last().ok_or("no FROM")?..];
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.as_str())
        .ok_or("runtime stage has no USER")?;
    let uid = user.split(':').next().unwrap_or_default();
    match uid.parse::<u32>() {
        Ok(0) | Err(_) => return Err(format!("USER {user:?} must be a non-root numeric uid")),
        Ok(_) => {}
    }
    let secretish = [
        ".key",
        ".crt",
        ".pem",
        ".p12",
        "secret",
        "certs",
        "credential",
    ];
    for (op, a) in &ins {
        let lower = a.to_ascii_lowercase();
        if (op == "COPY" || op == "ADD") && secretish.iter().any(|s| lower.contains(s)) {
            return Err(format!("{op} {a} may bake key material into the image"));
        }
        if (op == "ENV" || op == "ARG") && (lower.contains("fieldseal_k") || lower.contains("salt"))
        {
            return Err(format!("{op} {a} bakes a secret into the image"));
        }
    }
    for (op, a) in runtime {
        if (op == "COPY" || op == "ADD") && !a.starts_with("--from=") {
            return Err(format!(
                "runtime stage copies from the build context: {op} {a}"
            ));
        }
    }
    // `COPY . .` in the builder relies on the allowlist ignore file.
    if ins
        .iter()
        .any(|(op, a)| op == "COPY" && a.split_whitespace().next() == Some("."))
    {
        let lines: Vec<&str> = dockerignore.lines().map(str::trim).collect();
        if lines.iter().find(|l| !l.is_empty() && !l.starts_with('#')) != Some(&"*")
            || !lines.contains(&"**/*.key")
        {
            return Err("COPY . needs an allowlist dockerignore excluding **/*.key".into());
        }
    }
    let has = |op: &str, want: &str| ins.iter().any(|(o, a)| o == op && a == want);
    if !has("EXPOSE", "8443 9901") {
        return Err("must EXPOSE 8443 9901".into());
    }
    if !has("ENTRYPOINT", "[\"fieldseal\"]") {
        return Err("ENTRYPOINT must be [\"fieldseal\"]".into());
    }
    if !has(
        "CMD",
        "[\"run\", \"--config\", \"/etc/fieldseal/config.yaml\"]",
    ) {
        return Err("CMD must run with /etc/fieldseal/config.yaml".into());
    }
    Ok(())
}

fn grace(docs: &[(String, Value)]) -> Duration {
    duration_at(&proxy_config(docs), "shutdown.grace_period").unwrap()
}

fn dockerfile() -> (String, String) {
    let d = deploy_dir();
    (
        read(&d.join("Dockerfile")),
        read(&d.join("Dockerfile.dockerignore")),
    )
}

/// Applies `edit` to the named document and returns the edited set.
fn mutate(
    docs: &[(String, Value)],
    kind: &str,
    edit: impl FnOnce(&mut Value),
) -> Vec<(String, Value)> {
    let mut out = docs.to_vec();
    let target = out
        .iter_mut()
        .find(|(_, d)| d.get("kind").and_then(Value::as_str) == Some(kind))
        .unwrap();
    edit(&mut target.1);
    out
}

fn yaml(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

fn main_container_mut(d: &mut Value) -> &mut Value {
    d["spec"]["template"]["spec"]["containers"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("fieldseal"))
        .unwrap()
}

#[test]
fn every_document_has_api_version_kind_and_name() {
    let docs = kube_docs();
    check_common_fields(&docs).unwrap();
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    ] {
        one_of_kind(&docs, kind);
    }
    let mut broken = docs.clone();
    broken[0].1.as_mapping_mut().unwrap().remove("metadata");
    assert!(check_common_fields(&broken).is_err());
}

#[test]
fn multi_document_files_are_all_read() {
    let docs = parse_docs("a: 1\n---\nb: 2\n---\n").unwrap();
    assert_eq!(docs.len(), 2);
}

#[test]
fn the_proxy_config_in_the_configmap_parses() {
    let cfg = proxy_config(&kube_docs());
    assert_eq!(str_at(&cfg, "keys.active").unwrap(), "k2");
    assert_eq!(str_at(&cfg, "audit.key").unwrap(), "k2");
    assert_eq!(str_at(&cfg, "audit.on_failure").unwrap(), "refuse");
    assert_eq!(
        port_of(str_at(&cfg, "listen.address").unwrap()).unwrap(),
        8443
    );
    assert_eq!(grace(&kube_docs()), Duration::from_secs(20));
}

#[test]
fn probes_hit_readyz_and_healthz_on_the_admin_port() {
    let docs = kube_docs();
    check_probes(&docs).unwrap();

    let wrong_path = mutate(&docs, "Deployment", |d| {
        main_container_mut(d)["readinessProbe"]["httpGet"]["path"] = yaml("/healthz");
    });
    assert!(check_probes(&wrong_path).is_err());
    let wrong_port = mutate(&docs, "Deployment", |d| {
        main_container_mut(d)["livenessProbe"]["httpGet"]["port"] = yaml("https");
    });
    assert!(check_probes(&wrong_port).is_err());
    let moved_admin = mutate(&docs, "ConfigMap", |d| {
        let text = d["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .replace("0.0.0.0:9901", "0.0.0.0:9902");
        d["data"]["config.yaml"] = Value::String(text);
    });
    assert!(check_probes(&moved_admin).is_err());
    let loopback_admin = mutate(&docs, "ConfigMap", |d| {
        let text = d["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .replace("0.0.0.0:9901", "127.0.0.1:9901");
        d["data"]["config.yaml"] = Value::String(text);
    });
    assert!(check_probes(&loopback_admin).is_err());
}

#[test]
fn containers_run_non_root_read_only_without_capabilities() {
    let docs = kube_docs();
    check_security(&docs).unwrap();

    let writable = mutate(&docs, "Deployment", |d| {
        main_container_mut(d)["securityContext"]["readOnlyRootFilesystem"] = yaml("false");
    });
    assert!(check_security(&writable).is_err());
    let root = mutate(&docs, "Deployment", |d| {
        main_container_mut(d)["securityContext"]["runAsUser"] = yaml("0");
    });
    assert!(check_security(&root).is_err());
    let caps = mutate(&docs, "Deployment", |d| {
        main_container_mut(d)["securityContext"]["capabilities"]["drop"] = yaml("[NET_RAW]");
    });
    assert!(check_security(&caps).is_err());
}

#[test]
fn key_files_reach_the_proxy_owner_only() {
    let docs = kube_docs();
    check_key_volumes(&docs).unwrap();

    let loose = mutate(&docs, "Deployment", |d| {
        for v in d["spec"]["template"]["spec"]["volumes"]
            .as_sequence_mut()
            .unwrap()
        {
            if v.get("secret").is_some() {
                v["secret"]["defaultMode"] = yaml("420"); // 0644
            }
        }
    });
    assert!(check_key_volumes(&loose).is_err());
    let writable_mount = mutate(&docs, "Deployment", |d| {
        for m in main_container_mut(d)["volumeMounts"]
            .as_sequence_mut()
            .unwrap()
        {
            m["readOnly"] = yaml("false");
        }
    });
    assert!(check_key_volumes(&writable_mount).is_err());
    let no_chmod = mutate(&docs, "Deployment", |d| {
        for ic in d["spec"]["template"]["spec"]["initContainers"]
            .as_sequence_mut()
            .unwrap()
        {
            ic["command"] =
                yaml("[/bin/sh, -c, 'cp -L /fieldseal-secret/* /run/secrets/fieldseal/']");
        }
    });
    assert!(check_key_volumes(&no_chmod).is_err());
    let env_literal = mutate(&docs, "Deployment", |d| {
        main_container_mut(d)["env"] =
            yaml("[{name: FIELDSEAL_K1, value: hunter2}, {name: FIELDSEAL_SALT, value: x}]");
    });
    assert!(check_key_volumes(&env_literal).is_err());
}

#[test]
fn termination_grace_outlasts_the_proxy_drain() {
    let docs = kube_docs();
    check_shutdown(&docs).unwrap();
    let short = mutate(&docs, "Deployment", |d| {
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = yaml("22");
    });
    assert!(
        check_shutdown(&short).is_err(),
        "22 < 5s preStop + 20s grace"
    );
}

#[test]
fn pdb_and_service_select_the_pods_and_service_targets_https() {
    let docs = kube_docs();
    check_selectors(&docs).unwrap();

    let pdb = mutate(&docs, "PodDisruptionBudget", |d| {
        d["spec"]["selector"]["matchLabels"] = yaml("{app: other}");
    });
    assert!(check_selectors(&pdb).is_err());
    let svc = mutate(&docs, "Service", |d| {
        d["spec"]["ports"][0]["targetPort"] = yaml("admin");
    });
    assert!(check_selectors(&svc).is_err());
    let svc_num = mutate(&docs, "Service", |d| {
        d["spec"]["ports"][0]["targetPort"] = yaml("8443");
    });
    check_selectors(&svc_num).unwrap();
}

#[test]
fn example_secret_holds_only_placeholders() {
    let docs = kube_docs();
    check_secret_placeholders(&docs).unwrap();
    let real = mutate(&docs, "Secret", |d| {
        d["data"]["k2.key"] = yaml("c2VjcmV0LWtleS1ieXRlcw==");
    });
    assert!(check_secret_placeholders(&real).is_err());
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = read(&deploy_dir().join("fieldseal.service"));
    let g = grace(&kube_docs());
    check_systemd(&unit, g).unwrap();

    for (from, to) in [
        ("NoNewPrivileges=yes", "NoNewPrivileges=no"),
        ("ProtectSystem=strict", "ProtectSystem=full"),
        ("MemoryDenyWriteExecute=yes", ""),
        (
            "CapabilityBoundingSet=\n",
            "CapabilityBoundingSet=CAP_SYS_ADMIN\n",
        ),
        (
            "AF_INET AF_INET6 AF_UNIX",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
        ("TimeoutStopSec=30s", "TimeoutStopSec=10s"),
        (
            "SystemCallFilter=@system-service",
            "SystemCallFilter=@basic-io",
        ),
        ("ExecReload=/bin/kill -HUP $MAINPID", ""),
    ] {
        assert!(unit.contains(from), "unit lacks {from:?}");
        let broken = unit.replace(from, to);
        assert!(
            check_systemd(&broken, g).is_err(),
            "{from:?} -> {to:?} not caught"
        );
    }
    let no_creds: String = unit
        .lines()
        .filter(|l| !l.starts_with("LoadCredential="))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(check_systemd(&no_creds, g).is_err());
}

#[test]
fn dockerfile_runs_non_root_and_bakes_in_no_secrets() {
    let (file, ignore) = dockerfile();
    check_dockerfile(&file, &ignore).unwrap();

    let root = file.replace("USER 10001:10001", "USER root");
    assert!(check_dockerfile(&root, &ignore).is_err());
    let no_user = file.replace("USER 10001:10001", "");
    assert!(check_dockerfile(&no_user, &ignore).is_err());
    let key = file.replace(
        "COPY --from=builder",
        "COPY certs/server.key /etc/fieldseal/server.key\nCOPY --from=builder",
    );
    assert!(check_dockerfile(&key, &ignore).is_err());
    let env = file.replace("USER 10001", "ENV FIELDSEAL_K1=hunter2\nUSER 10001");
    assert!(check_dockerfile(&env, &ignore).is_err());
    assert!(check_dockerfile(&file, "target/\n").is_err());
    let unlocked = file.replace("--release --locked", "--release");
    assert!(check_dockerfile(&unlocked, &ignore).is_err());
}

// ---------------------------------------------------------------------------
// The container image as docs/deploy.md runs it. No Docker engine in CI:
// deploy/docker-smoke.sh proves it live; these check the same facts on the
// files.
// ---------------------------------------------------------------------------

/// The docker setup's files, as text.
struct DockerSetup {
    dockerfile: String,
    config: String,
    docs: String,
    smoke: String,
}

fn docker_setup() -> DockerSetup {
    let d = deploy_dir();
    DockerSetup {
        dockerfile: read(&d.join("Dockerfile")),
        config: read(&d.join("docker/config.yaml")),
        docs: read(&d.join("../docs/deploy.md")),
        smoke: read(&d.join("docker-smoke.sh")),
    }
}

/// The `docker run` command of the docs, continuation lines joined, as words.
fn docs_docker_run(docs: &str) -> Result<Vec<String>, String> {
    let mut joined = String::new();
    let mut cmd = None;
    for line in docs.lines() {
        let t = line.trim();
        if cmd.is_none() && !t.starts_with("docker run") {
            continue;
        }
        let (body, more) = match t.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (t, false),
        };
        joined.push_str(body);
        joined.push(' ');
        cmd = Some(());
        if !more {
            break;
        }
    }
    if cmd.is_none() {
        return Err("docs/deploy.md has no `docker run` command".into());
    }
    Ok(joined
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_string())
        .collect())
}

/// The value after `flag` (`-p X`, `--stop-timeout N`), every occurrence.
fn flag_values<'a>(words: &'a [String], flag: &str) -> Vec<&'a str> {
    words
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

fn check_docker_setup(s: &DockerSetup) -> Result<(), String> {
    let ins = docker_instructions(&s.dockerfile);
    // HEALTHCHECK: the binary probing the config the CMD runs.
    let health = ins
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, a)| a.as_str())
        .ok_or("no HEALTHCHECK")?;
    let (opts, cmd) = health.split_once("CMD ").ok_or("HEALTHCHECK without CMD")?;
    if cmd.trim()
        != "[\"fieldseal\", \"healthcheck\", \"--config\", \"/etc/fieldseal/config.yaml\"]"
    {
        return Err(format!(
            "HEALTHCHECK CMD {cmd:?} must be fieldseal healthcheck on the CMD's config"
        ));
    }
    if !opts.contains("--start-period=") || !opts.contains("--timeout=") {
        return Err(format!(
            "HEALTHCHECK needs a start period and a timeout: {opts:?}"
        ));
    }

    // The config for the image: reachable listeners on exposed ports.
    let path = std::path::Path::new("/etc/fieldseal/config.yaml");
    let cfg = fieldseal::config::Config::from_yaml(&s.config, path).map_err(|e| e.to_string())?;
    let exposed: Vec<u16> = ins
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect();
    let admin = cfg
        .admin
        .ok_or("the image's config has no admin listener")?;
    for (key, addr) in [("listen.address", cfg.listen), ("admin.address", admin)] {
        if !addr.ip().is_unspecified() {
            return Err(format!(
                "{key} {addr}: inside a container only a wildcard address is reachable from outside"
            ));
        }
        if !exposed.contains(&addr.port()) {
            return Err(format!("{key} port {} is not EXPOSEd", addr.port()));
        }
    }
    let secrets = std::path::Path::new("/run/secrets/fieldseal");
    let mut files = vec![cfg.tls.cert.clone(), cfg.tls.key.clone()];
    for k in &cfg.keys.as_ref().ok_or("no keys")?.keys {
        if let fieldseal::crypto::KeySource::File(p) = &k.source {
            files.push(p.clone());
        }
    }
    if let Some(f) = files.iter().find(|f| !f.starts_with(secrets)) {
        return Err(format!(
            "{} is not under the secrets mount {}",
            f.display(),
            secrets.display()
        ));
    }

    // The docs' docker run.
    let run = docs_docker_run(&s.docs)?;
    let published = flag_values(&run, "-p");
    let admin_port = admin.port().to_string();
    let admin_pub: Vec<&&str> = published
        .iter()
        .filter(|p| p.rsplit(':').next() == Some(admin_port.as_str()))
        .collect();
    if admin_pub.is_empty() || admin_pub.iter().any(|p| !p.starts_with("127.0.0.1:")) {
        return Err(format!(
            "the admin port must be published on the host's loopback only, got {admin_pub:?}"
        ));
    }
    let mounts = flag_values(&run, "-v");
    if !mounts
        .iter()
        .any(|m| m.ends_with("deploy/docker/config.yaml:/etc/fieldseal/config.yaml:ro"))
    {
        return Err(format!(
            "docs mount no deploy/docker/config.yaml at the CMD's path: {mounts:?}"
        ));
    }
    if !mounts
        .iter()
        .any(|m| m.ends_with(":/run/secrets/fieldseal:ro"))
    {
        return Err(format!("docs mount no read-only secrets: {mounts:?}"));
    }
    let stop: u64 = flag_values(&run, "--stop-timeout")
        .first()
        .and_then(|v| v.parse().ok())
        .ok_or("docker run needs --stop-timeout (Docker kills after 10 s by default)")?;
    if Duration::from_secs(stop) <= cfg.shutdown_grace {
        return Err(format!(
            "--stop-timeout {stop} does not outlast shutdown.grace_period {:?}",
            cfg.shutdown_grace
        ));
    }

    // The smoke script runs the same things.
    for want in [
        "deploy/Dockerfile",
        "deploy/docker/config.yaml",
        "/run/secrets/fieldseal",
        ".State.Health.Status",
        "/healthz",
        "/readyz",
        "docker stop",
        "--stop-timeout",
    ] {
        if !s.smoke.contains(want) {
            return Err(format!("docker-smoke.sh does not use {want:?}"));
        }
    }
    if !s.smoke.starts_with("#!/usr/bin/env bash\n") || !s.smoke.contains("set -euo pipefail") {
        return Err("docker-smoke.sh must be a strict bash script".into());
    }
    Ok(())
}

#[test]
fn the_container_is_healthy_and_reachable_as_documented() {
    let s = docker_setup();
    check_docker_setup(&s).unwrap();

    let bad = |edit: &dyn Fn(&mut DockerSetup)| {
        let mut copy = docker_setup();
        edit(&mut copy);
        check_docker_setup(&copy).is_err()
    };
    assert!(bad(
        &|s| s.config = s.config.replace("\"0.0.0.0:9901\"", "\"127.0.0.1:9901\"")
    ));
    assert!(bad(
        &|s| s.config = s.config.replace("\"0.0.0.0:8443\"", "\"0.0.0.0:8444\"")
    ));
    assert!(bad(&|s| s.config = s
        .config
        .replace("/run/secrets/fieldseal/k2.key", "/etc/k2.key")));
    assert!(bad(
        &|s| s.dockerfile = s.dockerfile.replace("HEALTHCHECK", "# HEALTHCHECK")
    ));
    assert!(bad(
        &|s| s.dockerfile = s.dockerfile.replace("\"healthcheck\"", "\"run\"")
    ));
    assert!(bad(
        &|s| s.docs = s.docs.replace("-p 127.0.0.1:9901:9901", "-p 9901:9901")
    ));
    assert!(bad(
        &|s| s.docs = s.docs.replace("--stop-timeout 30", "--stop-timeout 15")
    ));
    assert!(bad(&|s| s.docs = s.docs.replace("--stop-timeout 30", "")));
    assert!(bad(&|s| s.smoke = s.smoke.replace("/readyz", "/ready")));
}

#[test]
fn the_health_check_probes_the_admin_listener_of_the_image_config() {
    let path = deploy_dir().join("docker/config.yaml");
    let addr = fieldseal::healthcheck::admin_address(&path).unwrap();
    assert_eq!(addr, "127.0.0.1:9901".parse().unwrap());
}

#[cfg(unix)]
#[test]
fn the_docker_smoke_script_is_executable_bash() {
    use std::os::unix::fs::PermissionsExt;
    let path = deploy_dir().join("docker-smoke.sh");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "mode {mode:o}");
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
