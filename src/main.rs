//! The `fieldseal` command line. anyhow lives here only.
#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use fieldseal::config::Config;
use fieldseal::crypto::Keyring;
use fieldseal::offline::{self, Mode};
use fieldseal::{Listeners, Proxy};

#[derive(Parser)]
#[command(
    name = "fieldseal",
    version,
    about = "TLS-terminating reverse proxy that encrypts sensitive JSON fields before they reach a legacy backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (SIGHUP reloads it, SIGTERM/SIGINT drain and stop)
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file like `nginx -t`: exit 0 with a summary, or 1 naming file, line and column
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also load certificates and keys (needs the key env vars and files)
        #[arg(long)]
        load: bool,
    },
    /// Start the proxy on https://127.0.0.1:8443 in front of a built-in JSON service, with generated keys
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Where the generated certificate, key and config go
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write a development certificate and key (server.crt, server.key)
    Cert {
        /// Generate a self-signed pair (the only kind this command makes)
        #[arg(long, required = true)]
        self_signed: bool,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Subject alternative names
        #[arg(long = "name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
    /// Write a new key file: 32 random bytes, base64, mode 0600
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Encrypt a route's `encrypt` fields in JSON/NDJSON from stdin (backfill, exports)
    Encrypt {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        route: String,
    },
    /// Decrypt a route's `decrypt` fields in JSON/NDJSON from stdin
    Decrypt {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        route: String,
    },
    /// Re-encrypt every envelope in NDJSON from stdin under the active key; never writes plaintext
    Rewrap {
        #[arg(long, short)]
        config: PathBuf,
        /// Use this route's rules (needed for fields with a named context)
        #[arg(long, short)]
        route: Option<String>,
    },
    /// List key ids and the active one; with --scan, count envelopes per key id in NDJSON from stdin
    Keys {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        scan: bool,
    },
    /// Audit log tools
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify an audit log's hash chain; exit 1 naming the first bad line
    Verify {
        file: PathBuf,
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fieldseal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, json: bool) -> Result<()> {
    fieldseal::logging::init(level, json).map_err(|e| anyhow!(e))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let cfg = Config::load(&config).map_err(|e| anyhow!("{e}"))?;
            init_logging(&cfg.log.level, cfg.log.json)?;
            runtime()?.block_on(serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, load } => match Config::load(&config) {
            Ok(cfg) => {
                if load {
                    Proxy::new(cfg.clone()).map_err(|e| anyhow!("{}: {e}", config.display()))?;
                }
                for w in &cfg.warnings {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!("{}: ok: {}", config.display(), cfg.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { listen, dir } => {
            init_logging("info", false)?;
            runtime()?.block_on(demo(listen, dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            self_signed: _,
            out,
            names,
            force,
        } => {
            let (c, k) = fieldseal::tls::write_self_signed(&out, &names, force)?;
            println!(
                "wrote {} and {} (mode 0600) for {}",
                c.display(),
                k.display(),
                names.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            fieldseal::crypto::write_key_file(&out).map_err(|e| anyhow!("{e}"))?;
            println!(
                "wrote {} (32 random bytes, base64, mode 0600)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Encrypt { config, route } => route_transform(&config, &route, true),
        Command::Decrypt { config, route } => route_transform(&config, &route, false),
        Command::Rewrap { config, route } => {
            offline_cmd(&config, route.as_deref(), |cfg, ring, r| {
                let rules = match r {
                    Some(r) => Some(
                        cfg.routes
                            .by_name(r)
                            .ok_or_else(|| anyhow!("no route named {r:?}"))?,
                    ),
                    None => None,
                };
                let rules = rules.map(|r| r.decrypt_or_encrypt_rules());
                Ok(offline::transform_stream(
                    Mode::Rewrap(rules.as_deref()),
                    ring,
                    std::io::stdin().lock(),
                    std::io::stdout().lock(),
                )?)
            })
        }
        Command::Keys { config, scan } => {
            let cfg = Config::load(&config).map_err(|e| anyhow!("{e}"))?;
            let spec = cfg
                .keys
                .as_ref()
                .ok_or_else(|| anyhow!("{}: no keys section", config.display()))?;
            let mut out = std::io::stdout().lock();
            for k in &spec.keys {
                let active = if k.id == spec.active {
                    "  (active)"
                } else {
                    ""
                };
                writeln!(out, "{}{}", k.id, active)?;
            }
            if scan {
                let (counts, unreadable) =
                    offline::key_census(BufReader::new(std::io::stdin().lock()))?;
                writeln!(out, "\nenvelopes per key id:")?;
                for k in &spec.keys {
                    writeln!(
                        out,
                        "  {}: {}",
                        k.id,
                        counts.get(&k.id).copied().unwrap_or(0)
                    )?;
                }
                for (id, n) in counts
                    .iter()
                    .filter(|(id, _)| !spec.keys.iter().any(|k| &k.id == *id))
                {
                    writeln!(out, "  {id}: {n}  (NOT IN RING: these cannot be decrypted)")?;
                }
                if unreadable > 0 {
                    writeln!(out, "  ({unreadable} lines were not JSON)")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { file, config },
        } => {
            let cfg = Config::load(&config).map_err(|e| anyhow!("{e}"))?;
            let spec = cfg
                .keys
                .as_ref()
                .ok_or_else(|| anyhow!("{}: no keys section", config.display()))?;
            let ring = Keyring::load(spec).map_err(|e| anyhow!("{e}"))?;
            let f = std::fs::File::open(&file).with_context(|| format!("{}", file.display()))?;
            match fieldseal::audit::verify(BufReader::new(f), |kid| {
                ring.derive_subkey(kid, fieldseal::state::AUDIT_KEY_PURPOSE)
            }) {
                Ok(report) => {
                    println!(
                        "{}: ok: {} lines, chain intact",
                        file.display(),
                        report.lines
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// `encrypt` / `decrypt`: one route's rules over stdin to stdout.
fn route_transform(config: &Path, route: &str, encrypt: bool) -> Result<ExitCode> {
    offline_cmd(config, Some(route), |cfg, ring, _| {
        let r = cfg
            .routes
            .by_name(route)
            .ok_or_else(|| anyhow!("no route named {route:?}"))?;
        let mode = if encrypt {
            Mode::Encrypt(r)
        } else {
            Mode::Decrypt(r)
        };
        Ok(offline::transform_stream(
            mode,
            ring,
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        )?)
    })
}

fn offline_cmd(
    config: &Path,
    route: Option<&str>,
    f: impl FnOnce(&Config, &Keyring, Option<&str>) -> Result<offline::Stats>,
) -> Result<ExitCode> {
    let cfg = Config::load(config).map_err(|e| anyhow!("{e}"))?;
    init_logging("warn", false);
    let spec = cfg
        .keys
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no keys section", config.display()))?;
    let ring = Keyring::load(spec).map_err(|e| anyhow!("{e}"))?;
    let stats = f(&cfg, &ring, route)?;
    eprintln!("{} documents, {} fields", stats.documents, stats.fields);
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn spawn_reload_on_hup(proxy: Proxy) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading");
            let _ = proxy.reload().await;
        }
    });
}

async fn serve(cfg: Config) -> Result<()> {
    let listeners = Listeners::bind(&cfg)
        .await
        .context("cannot bind listeners")?;
    let summary = cfg.summary();
    let admin = cfg.admin;
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "configuration");
    }
    let proxy = tokio::task::spawn_blocking(move || Proxy::new(cfg))
        .await?
        .map_err(|e| anyhow!("{e}"))?;
    let admin = admin.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(%summary, %admin, "fieldseal serving");
    spawn_reload_on_hup(proxy.clone());
    proxy.serve(listeners, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn demo(listen: SocketAddr, dir: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fieldseal-demo-{}", std::process::id()))
    });
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    tokio::spawn(fieldseal::demo::start_backend(backend));
    let https = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (try --listen 127.0.0.1:0)"))?;
    let listen = https.local_addr()?;
    let path = fieldseal::demo::prepare(&dir, listen, backend_addr).map_err(|e| anyhow!(e))?;
    let cfg = Config::load(&path).map_err(|e| anyhow!("{e}"))?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin.local_addr()?;
    let proxy = Proxy::new(cfg).map_err(|e| anyhow!("{e}"))?;
    println!(
        "{}",
        fieldseal::demo::instructions(listen, backend_addr, Some(admin_addr), &dir)
    );
    let _ = std::io::stdout().flush();
    spawn_reload_on_hup(proxy.clone());
    proxy
        .serve(
            Listeners {
                https,
                redirect: None,
                admin: Some(admin),
            },
            shutdown_signal(),
        )
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    if dir.exists() {
        bail!("could not remove {}", dir.display());
    }
    Ok(())
}
