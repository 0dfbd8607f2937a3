//! Logging setup: the level from the config (or `FIELDSEAL_LOG`), JSON or
//! text on stderr, colours only on a terminal.
//!
//! `FIELDSEAL_LOG` is checked as strictly as `log.level` in the YAML: a value
//! that is not a level or `target=level` list is an error, because
//! tracing's own parser reads a stray word such as `verbose` as a target
//! name and then silences everything else, the access log included.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

// The `log` section's words live here, below the config compiler, so the raw
// structs and the compiled settings both use them without a cycle.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Lines for people.
    Text,
}

/// Whose `X-Request-Id` the proxy keeps (`log.trust_request_id`) instead of
/// making its own: a well-formed id from such a peer joins our log lines to
/// the trace it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrustRequestId {
    /// Only from peers in `trusted_proxies` (the default).
    #[default]
    TrustedProxies,
    /// Never: every request gets an id of ours.
    Never,
    /// From any client (only when every client is a proxy of yours).
    Always,
}

/// What the access log says of a request's path (`log.paths`). A path is a
/// client-supplied string: it can hold an id, an e-mail address, a token or
/// a field value (`/api/users/078-05-1120`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogPaths {
    /// The matched route's pattern (`/api/users/*`), and `path_hash`: a
    /// short keyed hash of the canonical path, to tell requests to one path
    /// apart without the path.
    #[default]
    Pattern,
    /// The canonical path as matched (a risk: whatever the client put in it
    /// is in the log).
    Full,
}

/// The environment variable that overrides `log.level`.
pub const ENV: &str = "FIELDSEAL_LOG";

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Libraries whose debug output is protocol frames and connection
/// bookkeeping, not fieldseal's decisions: at `debug` they stay at `warn`;
/// they log more only at `trace` or when `FIELDSEAL_LOG` names them.
const FRAME_LOGGERS: &[&str] = &[
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
    "tokio",
    "runtime",
    "mio",
    "tower",
    "want",
];

/// Parsed `FIELDSEAL_LOG`: an optional level for everything and levels for
/// named targets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub level: Option<String>,
    pub targets: Vec<(String, String)>,
}

/// Parses a `FIELDSEAL_LOG` value: comma-separated `level` or
/// `target=level` items, e.g. `debug` or `info,fieldseal::proxy=debug,h2=trace`.
pub fn parse_directives(value: &str) -> Result<Directives, String> {
    let mut out = Directives::default();
    let bad = |item: &str, why: &str| {
        format!(
            "{ENV}: {item:?} {why} (expected a level or target=level items separated by commas; levels: {})",
            LEVELS.join(", ")
        )
    };
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            None => {
                let level = level(item).ok_or_else(|| bad(item, "is not a log level"))?;
                if out.level.replace(level).is_some() {
                    return Err(bad(item, "is a second level"));
                }
            }
            Some((target, lvl)) => {
                let (target, lvl) = (target.trim(), lvl.trim());
                if !is_target(target) {
                    return Err(bad(item, "does not start with a module path"));
                }
                let lvl = level(lvl).ok_or_else(|| bad(item, "does not end with a log level"))?;
                out.targets.push((target.to_string(), lvl));
            }
        }
    }
    Ok(out)
}

fn level(s: &str) -> Option<String> {
    let l = s.to_ascii_lowercase();
    LEVELS.contains(&l.as_str()).then_some(l)
}

/// `name(::name)*` with Rust identifier characters.
fn is_target(s: &str) -> bool {
    !s.is_empty()
        && s.split("::").all(|part| {
            let mut b = part.bytes();
            b.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        })
}

/// The filter directives for `config_level` and `FIELDSEAL_LOG`'s `env`.
/// A level in `env` replaces the config's; targets it names are set as
/// given; the frame loggers stay at `warn` unless the level is `trace`.
pub fn filter_directives(config_level: &str, env: Option<&str>) -> Result<String, String> {
    let env = match env {
        Some(v) => parse_directives(v)?,
        None => Directives::default(),
    };
    let base = env
        .level
        .clone()
        .unwrap_or_else(|| config_level.to_string());
    let quiet = match base.as_str() {
        "trace" => "trace",
        "error" | "off" => base.as_str(),
        _ => "warn",
    };
    let mut parts = vec![base.clone()];
    for t in FRAME_LOGGERS {
        if !env.targets.iter().any(|(n, _)| n == t) {
            parts.push(format!("{t}={quiet}"));
        }
    }
    parts.extend(env.targets.iter().map(|(t, l)| format!("{t}={l}")));
    Ok(parts.join(","))
}

/// Installs the global subscriber on stderr. `json`: one JSON object per
/// line; otherwise text, coloured only when stderr is a terminal (and
/// `NO_COLOR` is unset). Errors on an invalid `FIELDSEAL_LOG`.
pub fn init(config_level: &str, json: bool) -> Result<(), String> {
    let env = std::env::var(ENV).ok();
    let directives = filter_directives(config_level, env.as_deref())?;
    let filter = EnvFilter::try_new(&directives).map_err(|e| format!("{ENV}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, demo) keeps the first subscriber.
    let _ = if json {
        builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .try_init()
    } else {
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        builder.with_ansi(colour).try_init()
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_parse() {
        assert_eq!(
            parse_directives("DEBUG").unwrap(),
            Directives {
                level: Some("debug".into()),
                targets: vec![]
            }
        );
        let d = parse_directives(" info , fieldseal::proxy=debug,h2=TRACE,").unwrap();
        assert_eq!(d.level.as_deref(), Some("info"));
        assert_eq!(
            d.targets,
            vec![
                ("fieldseal::proxy".into(), "debug".into()),
                ("h2".into(), "trace".into())
            ]
        );
        assert_eq!(parse_directives("").unwrap(), Directives::default());
    }

    #[test]
    fn anything_else_is_an_error_naming_the_variable() {
        for bad in [
            "verbose",
            "warning",
            "info,debug",
            "h2",
            "=debug",
            "h2=loud",
            "fieldseal:proxy=debug",
            "fieldseal::=debug",
            "[span]=debug",
            "a b=info",
        ] {
            let e = parse_directives(bad).expect_err(bad);
            assert!(e.starts_with("FIELDSEAL_LOG: "), "{bad}: {e}");
        }
    }

    #[test]
    fn frame_loggers_stay_quiet_below_trace_unless_named() {
        let d = filter_directives("debug", None).unwrap();
        assert!(d.starts_with("debug,"), "{d}");
        for t in ["hyper=warn", "h2=warn", "rustls=warn", "hyper_util=warn"] {
            assert!(d.split(',').any(|p| p == t), "{t} in {d}");
        }
        let d = filter_directives("info", Some("trace")).unwrap();
        assert!(d.split(',').any(|p| p == "h2=trace"), "{d}");
        let d = filter_directives("info", Some("h2=debug")).unwrap();
        assert!(d.starts_with("info,"), "config level kept: {d}");
        assert!(d.split(',').any(|p| p == "h2=debug"), "{d}");
        assert!(!d.split(',').any(|p| p == "h2=warn"), "{d}");
        let d = filter_directives("error", None).unwrap();
        assert!(d.split(',').any(|p| p == "hyper=error"), "{d}");
        for d in [
            filter_directives("info", Some("debug,h2=trace")).unwrap(),
            filter_directives("warn", None).unwrap(),
        ] {
            EnvFilter::try_new(&d).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
    }
}
