//! The `fieldseal` command line. anyhow lives here only.
#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
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
    /// Validate a config file like `nginx -t`: parse it, open every file and variable it names, and exit 0 with a summary, or 1 with each problem as file:line:column: key: problem
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Only parse and validate the file: do not open the certificates, keys, audit file and environment variables it names
        #[arg(long, conflicts_with = "load")]
        no_load: bool,
        /// Open the files and variables (the default; kept for older scripts)
        #[arg(long, hide = true)]
        load: bool,
    },
    /// Start the proxy on https://127.0.0.1:8443 in front of a built-in JSON service, with generated keys, a development JWT issuer and per-subject keys
    Demo {
        /// The HTTPS address (127.0.0.1:0 picks a free port)
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// A new or empty folder for the generated certificate, keys, key store and config (default: a private temporary folder); what the demo wrote is removed when it stops
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write a commented starter config, a development certificate and a key into a folder; never overwrites
    Init {
        /// Where to write fieldseal.yaml, certs/ and keys/ (created if missing)
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The HTTPS listener address in the config
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// The admin listener address in the config (0.0.0.0:9901 in a container)
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// The service fieldseal protects
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        upstream: String,
    },
    /// Print the JSON Schema of the config file (for editors and linters)
    ConfigSchema,
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a folder
    Man {
        /// Write fieldseal.1 and fieldseal-COMMAND.1 here instead of printing fieldseal.1
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Probe the admin listener's /healthz (or /readyz): exit 0 when it answers 200, 1 otherwise (for container health checks)
    Healthcheck {
        /// Take the admin address from this config (0.0.0.0 and :: are probed on loopback)
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin address to probe (default: the config's, else 127.0.0.1:9901)
        #[arg(long, conflicts_with = "config")]
        address: Option<SocketAddr>,
        /// Probe /readyz (ready to serve traffic) instead of /healthz (alive)
        #[arg(long)]
        ready: bool,
        /// Give up after this long
        #[arg(long, default_value = "3s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
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
    #[command(after_help = OFFLINE_EXIT_CODES)]
    Encrypt {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        route: String,
        #[command(flatten)]
        subject: SubjectPathArgs,
        #[command(flatten)]
        failures: FailureArgs,
    },
    /// Decrypt a route's `decrypt` fields in JSON/NDJSON from stdin
    #[command(after_help = OFFLINE_EXIT_CODES)]
    Decrypt {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        route: String,
        #[command(flatten)]
        failures: FailureArgs,
    },
    /// Add or recompute a route's blind indexes (`index:` rules) in JSON/NDJSON from stdin,
    /// from plaintext fields or by opening their envelopes (backfill, index key rotation)
    #[command(after_help = OFFLINE_EXIT_CODES)]
    Index {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        route: String,
        /// Where each record names its tenant (`$.tenant_id`): needed when the
        /// route's indexes are keyed per tenant (`index_scope: tenant`)
        #[arg(long)]
        tenant_path: Option<String>,
        /// Where each record names its subject: needed for `index_scope: subject`
        #[arg(long)]
        subject_path: Option<String>,
        #[command(flatten)]
        failures: FailureArgs,
    },
    /// Re-encrypt every envelope in JSON/NDJSON from stdin under the active key; never writes plaintext
    #[command(after_help = OFFLINE_EXIT_CODES)]
    Rewrap {
        #[arg(long, short)]
        config: PathBuf,
        /// Use this route's rules (needed for fields with a named context)
        #[arg(long, short)]
        route: Option<String>,
        #[command(flatten)]
        failures: FailureArgs,
    },
    /// List key ids, sources and fingerprints; with --scan, count envelopes per key id in JSON/NDJSON from stdin; `keys generate ID` creates a pkcs11 key in its token
    #[command(after_help = OFFLINE_EXIT_CODES, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Keys {
        #[command(subcommand)]
        command: Option<KeysCommand>,
        #[arg(long, short, required = true)]
        config: Option<PathBuf>,
        #[arg(long)]
        scan: bool,
    },
    /// Audit log tools
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tenant and subject keys in the key store: list, show, erase, rewrap
    Subjects {
        #[command(subcommand)]
        command: SubjectsCommand,
    },
}

/// Whose key a `subjects` command means.
#[derive(clap::Args)]
struct SubjectArgs {
    subject: String,
    #[arg(long)]
    tenant: Option<String>,
    /// subject, or tenant (then SUBJECT is ignored)
    #[arg(long, value_enum, default_value_t = ScopeArg::Subject)]
    scope: ScopeArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScopeArg {
    Subject,
    Tenant,
}

impl From<ScopeArg> for fieldseal::crypto::RefScope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Subject => fieldseal::crypto::RefScope::Subject,
            ScopeArg::Tenant => fieldseal::crypto::RefScope::Tenant,
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create ring key ID (a `pkcs11` key) in its token: AES-256, sensitive, never extractable; refuses if the label exists
    Generate {
        id: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SubjectsCommand {
    /// Every reference with its key versions, wrapping keys, creation and erasure times
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// One subject's reference, key versions and state
    Show {
        #[command(flatten)]
        who: SubjectArgs,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Destroy every version of a subject's key and record a tombstone (cannot be undone)
    Erase {
        #[command(flatten)]
        who: SubjectArgs,
        #[arg(long, short)]
        config: PathBuf,
        /// Who asked (operator, ticket), recorded in the tombstone
        #[arg(long, default_value = "cli")]
        requested_by: String,
    },
    /// Rewrap every stored key under the ring's active key (after a ring rotation); with
    /// --subject-path, move the envelopes of JSON/NDJSON from stdin (fs1 data sealed under the
    /// deployment's keys) onto each record's subject key
    #[command(after_help = OFFLINE_EXIT_CODES)]
    Rewrap {
        #[arg(long, short)]
        config: PathBuf,
        /// With --subject-path: the tenant- or subject-scoped route the data belongs to
        #[arg(long, short, requires = "subject_path")]
        route: Option<String>,
        #[command(flatten)]
        subject: SubjectPathArgs,
        #[command(flatten)]
        failures: FailureArgs,
    },
}

/// Whose keys seal each document (a tenant- or subject-scoped route): the
/// subject, and the tenant, taken from each record.
#[derive(clap::Args)]
struct SubjectPathArgs {
    /// Seal each document under the data key of the subject found at this
    /// path (`$.owner_id`), from the config's key_store; the route must have
    /// key_scope subject or tenant (for tenant scope, the tenant's id)
    #[arg(long, value_name = "$.PATH")]
    subject_path: Option<String>,
    /// The tenant of each document, as the proxy takes it from the token's
    /// tenant claim: give it whenever the tokens carry one
    #[arg(long, value_name = "$.PATH", requires = "subject_path")]
    tenant_path: Option<String>,
}

/// What the offline tools do with a document they cannot transform.
#[derive(clap::Args)]
struct FailureArgs {
    /// Go on after a document that fails: leave it out of the output, list
    /// it in --failures, and exit 1 at the end
    #[arg(long, requires = "failures")]
    keep_going: bool,
    /// With --keep-going: write one JSON line per failed document here
    /// (document number, input lines, error; never a value)
    #[arg(long, value_name = "FILE", requires = "keep_going")]
    failures: Option<PathBuf>,
}

const OFFLINE_EXIT_CODES: &str = "Exit codes: 0 every document done; 1 some documents failed \
(or could not be read); 2 usage error; 3 configuration, keys or input/output error.";

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify an audit log's hash chain; print its last (seq, MAC) head
    #[command(
        after_help = "Exit codes: 0 intact; 1 tampered or truncated (the first bad line is named); \
2 usage error; 3 configuration, keys or input error; 4 key mismatch (no line verifies under \
the configured key: nothing could be checked)."
    )]
    Verify {
        file: PathBuf,
        #[arg(long, short)]
        config: PathBuf,
        /// The log continues the chain after this head (SEQ:MAC, as printed
        /// by an earlier verify of the previous file)
        #[arg(long, value_name = "SEQ:MAC")]
        from: Option<fieldseal::audit::ChainHead>,
        /// A head recorded earlier: the log must still reach it with the
        /// same MAC (detects a truncated or rewritten log)
        #[arg(long, value_name = "SEQ:MAC")]
        expect: Option<fieldseal::audit::ChainHead>,
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
    fieldseal::logging::init(level, json).map_err(anyhow::Error::msg)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The runtime `run` starts on. `per_core`: a single-threaded control
/// runtime (admin listener, health checks, signals, reload); the serving
/// runtimes are started by `serve`, one per worker. `shared`: one
/// multi-threaded runtime with `server.workers` threads that serves too.
fn serve_runtime(server: &fieldseal::config::ServerSettings) -> Result<tokio::runtime::Runtime> {
    let mut b = match server.runtime {
        fieldseal::config::RuntimeMode::PerCore => tokio::runtime::Builder::new_current_thread(),
        fieldseal::config::RuntimeMode::Shared => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(server.worker_count());
            b
        }
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let cfg = Config::load(&config)?;
            let preflight = fieldseal::config::preflight::check(&cfg);
            if !preflight.errors.is_empty() {
                return Err(anyhow!("{}", lines(&preflight.errors)));
            }
            init_logging(cfg.log.level.as_str(), cfg.log.json)?;
            for w in &preflight.warnings {
                tracing::warn!(warning = %w, "host");
            }
            serve_runtime(&cfg.server)?.block_on(serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            no_load,
            load: _,
        } => Ok(check(&config, !no_load)),
        Command::Demo { listen, dir } => {
            // Refuse a folder that holds anything before binding or writing.
            let dir =
                fieldseal::demo::DemoDir::claim(dir.as_deref()).map_err(anyhow::Error::msg)?;
            init_logging("info", false)?;
            runtime()?.block_on(demo(listen, dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            dir,
            listen,
            admin,
            upstream,
        } => init(&dir, listen, admin, &upstream),
        Command::ConfigSchema => print_out(format!("{}\n", fieldseal::config::schema_json())),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "fieldseal", &mut script);
            print_out(script)
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
        Command::Healthcheck {
            config,
            address,
            ready,
            timeout,
        } => healthcheck(config.as_deref(), address, ready, timeout),
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
            fieldseal::crypto::write_key_file(&out)?;
            println!(
                "wrote {} (32 random bytes, base64, mode 0600)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Encrypt {
            config,
            route,
            subject,
            failures,
        } => Ok(offline_exit(match subject.subject_path {
            None => transform_cmd(&config, Transform::Encrypt(route), failures),
            Some(_) => subject_transform_cmd(&config, &route, false, &subject, failures),
        })),
        Command::Decrypt {
            config,
            route,
            failures,
        } => Ok(offline_exit(transform_cmd(
            &config,
            Transform::Decrypt(route),
            failures,
        ))),
        Command::Index {
            config,
            route,
            tenant_path,
            subject_path,
            failures,
        } => Ok(offline_exit(transform_cmd(
            &config,
            Transform::Index(route, tenant_path, subject_path),
            failures,
        ))),
        Command::Rewrap {
            config,
            route,
            failures,
        } => Ok(offline_exit(transform_cmd(
            &config,
            Transform::Rewrap(route),
            failures,
        ))),
        Command::Keys {
            command: Some(KeysCommand::Generate { id, config }),
            ..
        } => keys_generate(&config, &id),
        Command::Keys {
            config: Some(config),
            scan,
            ..
        } => Ok(offline_exit(keys_cmd(&config, scan))),
        Command::Keys { config: None, .. } => Err(anyhow!("keys: --config is required")),
        Command::Subjects {
            command:
                SubjectsCommand::Rewrap {
                    config,
                    route: Some(route),
                    subject,
                    failures,
                },
        } if subject.subject_path.is_some() => Ok(offline_exit(subject_transform_cmd(
            &config, &route, true, &subject, failures,
        ))),
        Command::Subjects { command } => Ok(offline_exit(subjects_cmd(command))),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    config,
                    from,
                    expect,
                },
        } => Ok(offline_exit(audit_verify_cmd(
            &file,
            &config,
            from.as_ref(),
            expect.as_ref(),
        ))),
    }
}

// ---------------------------------------------------------------------------
// Offline tools: exit codes are documented in README ("Exit codes").
// ---------------------------------------------------------------------------

/// Some documents failed, a scan could not read everything, or an audit log
/// was tampered with.
const EXIT_DATA: u8 = 1;
/// The configuration, the keys or the input/output (nothing was judged).
const EXIT_SETUP: u8 = 3;
/// `audit verify`: no line verifies under the configured key.
const EXIT_KEY_MISMATCH: u8 = 4;

/// Setup errors of an offline tool exit 3, apart from data failures (1)
/// and usage errors (2, from clap).
fn offline_exit(r: Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("fieldseal: {e:#}");
        ExitCode::from(EXIT_SETUP)
    })
}

enum Transform {
    Encrypt(String),
    Decrypt(String),
    Rewrap(Option<String>),
    /// Route, tenant path, subject path.
    Index(String, Option<String>, Option<String>),
}

fn load_ring(cfg: &Config, config: &Path) -> Result<Keyring> {
    Ok(Keyring::load(keys_of(cfg, config)?)?)
}

fn keys_of<'c>(cfg: &'c Config, config: &Path) -> Result<&'c fieldseal::crypto::KeyringSpec> {
    cfg.keys
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no keys section", config.display()))
}

/// The size of stdin when it is a regular file (`< dump.ndjson`), for the
/// progress display's percentage and ETA.
fn stdin_size() -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    meta.is_file().then_some(meta.len())
}

/// `subjects rewrap --subject-path` and `encrypt --subject-path`: each
/// document sealed under its own subject's (or tenant's) data key, created
/// in the key store on first use as a proxy's first write would.
fn subject_transform_cmd(
    config: &Path,
    route_name: &str,
    rewrap: bool,
    paths: &SubjectPathArgs,
    failures: FailureArgs,
) -> Result<ExitCode> {
    use fieldseal::crypto::{RefScope, SubjectKeys};
    use fieldseal::keystore::Resolved;
    let cfg = Config::load(config)?;
    init_logging("warn", false)?;
    let route = cfg
        .routes
        .by_name(route_name)
        .ok_or_else(|| anyhow!("no route named {route_name:?}"))?;
    let scope = route.ref_scope().ok_or_else(|| {
        anyhow!(
            "route {route_name:?} has key_scope deployment: --subject-path needs a tenant- or subject-scoped route"
        )
    })?;
    let parse = |flag: &str, p: &str| {
        offline::parse_subject_path(p).ok_or_else(|| {
            anyhow!("{flag} {p:?}: expected $.name or $.name.name (member names only)")
        })
    };
    let subject_path = parse(
        "--subject-path",
        paths.subject_path.as_deref().unwrap_or_default(),
    )?;
    let tenant_path = paths
        .tenant_path
        .as_deref()
        .map(|p| parse("--tenant-path", p))
        .transpose()?;
    let spec = cfg
        .key_store
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no key_store section", config.display()))?;
    let ring = load_ring(&cfg, config)?;
    let keks = fieldseal::crypto::Keks::for_ring(&ring, keys_of(&cfg, config)?)
        .ok_or_else(|| anyhow!("the active key has no key-encryption key"))?;
    let service = fieldseal::keystore::open_service(spec, keks).map_err(|e| anyhow!(e))?;
    let revive = route.new_key_after_erasure();
    let shown = paths.subject_path.clone().unwrap_or_default();
    let keys_for = |doc: &[u8]| -> Result<SubjectKeys, String> {
        let tenant = match &tenant_path {
            Some(p) => Some(
                offline::subject_at(doc, p)
                    .ok_or_else(|| "no tenant (a string or number) at --tenant-path".to_string())?,
            ),
            None => None,
        };
        let subject = offline::subject_at(doc, &subject_path)
            .ok_or_else(|| format!("no subject (a string or number) at {shown}"))?;
        // A tenant-scoped route: the value at --subject-path is the tenant.
        let (tenant, subject) = match scope {
            RefScope::Tenant => (Some(subject.clone()), subject),
            RefScope::Subject => (tenant, subject),
        };
        let reference = service
            .reference(scope, tenant.as_deref(), &subject)
            .ok_or_else(|| "the subject has no reference".to_string())?;
        match service.resolve_now(&reference, true, revive) {
            Ok(Resolved::Keys(keys)) => Ok(SubjectKeys::clone(&keys)),
            Ok(Resolved::Erased) => Err(format!(
                "subject {reference} is erased (the route's on_erased_write is refuse)"
            )),
            Ok(Resolved::Absent) => Err(format!("subject {reference} has no key")),
            Err(e) => Err(format!("subject {reference}: {e}")),
        }
    };
    let rules = route.decrypt_or_encrypt_rules();
    let mode = if rewrap {
        offline::Mode::RewrapToSubject(Some(rules.as_slice()), &keys_for)
    } else {
        offline::Mode::EncryptForSubject(route, &keys_for)
    };
    run_transform(&mode, &ring, failures, rewrap, None)
}

/// `encrypt`, `decrypt`, `rewrap`: stdin to stdout, summary on stderr.
fn transform_cmd(config: &Path, what: Transform, failures: FailureArgs) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    init_logging("warn", false)?;
    let ring = load_ring(&cfg, config)?;
    if !ring.active_has_bytes() && !matches!(what, Transform::Decrypt(_)) {
        // Deployment data sealed by the proxy then sits under the
        // deployment data key in the key store, which these tools don't open.
        return Err(anyhow!(
            "the active key {:?} is a pkcs11 key: the offline tools seal with a file or passphrase key's bytes; make one active for this run",
            ring.active_id()
        ));
    }
    let route = |name: &str| {
        cfg.routes
            .by_name(name)
            .ok_or_else(|| anyhow!("no route named {name:?}"))
    };
    let rewrap_rules;
    let mode = match &what {
        Transform::Encrypt(r) => Mode::Encrypt(route(r)?),
        Transform::Decrypt(r) => Mode::Decrypt(route(r)?),
        Transform::Index(r, ..) => Mode::Index(route(r)?),
        Transform::Rewrap(r) => {
            rewrap_rules = r
                .as_deref()
                .map(|r| route(r).map(|r| r.decrypt_or_encrypt_rules()))
                .transpose()?;
            Mode::Rewrap(rewrap_rules.as_deref())
        }
    };
    // Tenant- or subject-keyed indexes: each record's key from the store.
    let service = match &what {
        Transform::Index(_, t, s) if t.is_some() || s.is_some() => {
            let spec = cfg
                .key_store
                .as_ref()
                .ok_or_else(|| anyhow!("{}: no key_store section", config.display()))?;
            let keks = fieldseal::crypto::Keks::for_ring(&ring, keys_of(&cfg, config)?)
                .ok_or_else(|| anyhow!("the active key has no key-encryption key"))?;
            Some(fieldseal::keystore::open_service(spec, keks).map_err(|e| anyhow!(e))?)
        }
        _ => None,
    };
    let path = |flag: &str, p: &Option<String>| {
        p.as_deref()
            .map(|p| {
                offline::member_path(p)
                    .ok_or_else(|| anyhow!("{flag} {p:?}: expected $.member(.member)*"))
            })
            .transpose()
    };
    let index_keys = match (&what, &service) {
        (Transform::Index(_, t, s), Some(service)) => Some(offline::IndexKeySource {
            service,
            tenant: path("--tenant-path", t)?,
            subject: path("--subject-path", s)?,
        }),
        _ => None,
    };
    let rewrap = matches!(what, Transform::Rewrap(_));
    run_transform(&mode, &ring, failures, rewrap, index_keys)
}

/// Runs one offline transform over stdin to stdout; the summary and any
/// failure on stderr.
fn run_transform(
    mode: &offline::Mode<'_>,
    ring: &Keyring,
    failures: FailureArgs,
    rewrap: bool,
    index_keys: Option<offline::IndexKeySource<'_>>,
) -> Result<ExitCode> {
    let mut failures_file = match &failures.failures {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .with_context(|| format!("--failures {}", p.display()))?,
            ))
        }
        None => None,
    };
    let verb = mode.verb();
    let stdin = std::io::stdin();
    let stats = offline::transform_stream(
        mode,
        ring,
        std::io::BufReader::with_capacity(1 << 16, stdin.lock()),
        std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        offline::RunOptions {
            keep_going: failures.keep_going,
            failures: failures_file.as_mut().map(|w| w as &mut dyn Write),
            progress: offline::Progress::on_stderr(verb, stdin_size()),
            index_keys,
        },
    )?;
    eprintln!("{}", offline::summary(mode, ring, &stats));
    if let Some(f) = &stats.stopped {
        eprintln!(
            "fieldseal {verb}: stopped at {f}; the {} documents before it were written, nothing after it",
            stats.written
        );
        return Ok(ExitCode::from(EXIT_DATA));
    }
    if stats.failed > 0 {
        let at = failures
            .failures
            .as_ref()
            .map_or(String::new(), |p| format!(": see {}", p.display()));
        eprintln!(
            "fieldseal {verb}: {} documents failed and are not in the output{at}",
            stats.failed
        );
        if rewrap {
            eprintln!(
                "fieldseal rewrap: keep every old key until those documents are re-encrypted too"
            );
        }
        return Ok(ExitCode::from(EXIT_DATA));
    }
    Ok(ExitCode::SUCCESS)
}

/// `keys`: the ring with sources and fingerprints. `keys --scan`: the
/// census of envelopes per key id in stdin (needs the config, not the keys).
fn subjects_cmd(command: SubjectsCommand) -> Result<ExitCode> {
    let config = match &command {
        SubjectsCommand::List { config }
        | SubjectsCommand::Show { config, .. }
        | SubjectsCommand::Erase { config, .. }
        | SubjectsCommand::Rewrap { config, .. } => config.clone(),
    };
    let cfg = Config::load(&config)?;
    let spec = cfg
        .key_store
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no key_store section", config.display()))?;
    let ring = load_ring(&cfg, &config)?;
    let keks = fieldseal::crypto::Keks::for_ring(&ring, keys_of(&cfg, &config)?)
        .ok_or_else(|| anyhow!("the active key has no key-encryption key"))?;
    let service = fieldseal::keystore::open_service(spec, keks).map_err(|e| anyhow!(e))?;
    let mut out = std::io::stdout().lock();
    let time = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    match command {
        SubjectsCommand::List { .. } => {
            for s in service.store().list()? {
                if fieldseal::keystore::is_reserved(&s.reference) {
                    continue;
                }
                match s.erased_at {
                    Some(at) => writeln!(
                        out,
                        "{}  erased {} by {}",
                        s.reference,
                        time(at),
                        s.erased_by.unwrap_or_default()
                    )?,
                    None => writeln!(
                        out,
                        "{}  versions {:?}  wrapped by {}  created {}",
                        s.reference,
                        s.versions,
                        s.kek_ids.join(","),
                        s.created_at.map(time).unwrap_or_default()
                    )?,
                }
            }
        }
        SubjectsCommand::Show { who, .. } => {
            let reference = service
                .reference(who.scope.into(), who.tenant.as_deref(), &who.subject)
                .ok_or_else(|| anyhow!("reference"))?;
            match service.store().get(&reference)? {
                fieldseal::keystore::SubjectRecord::Absent => writeln!(out, "{reference}  no key")?,
                fieldseal::keystore::SubjectRecord::Erased { at, .. } => {
                    writeln!(out, "{reference}  erased {}", time(at))?
                }
                fieldseal::keystore::SubjectRecord::Keys(keys) => {
                    for k in keys {
                        writeln!(
                            out,
                            "{reference}  version {}  wrapped by {}  created {}",
                            k.version,
                            k.kek_id,
                            time(k.created_at)
                        )?;
                    }
                }
            }
        }
        SubjectsCommand::Erase {
            who, requested_by, ..
        } => {
            let (reference, n) = service
                .erase_subject(
                    who.scope.into(),
                    who.tenant.as_deref(),
                    &who.subject,
                    &format!("cli:{requested_by}"),
                )
                .map_err(|e| anyhow!(e.to_string()))?;
            writeln!(out, "{reference}  erased ({n} key versions destroyed)")?;
            writeln!(
                out,
                "running proxies drop their cached keys within key_store.cache_ttl ({})",
                humantime::format_duration(spec.cache_ttl)
            )?;
        }
        SubjectsCommand::Rewrap { .. } => {
            let (moved, current) = service.rewrap_all().map_err(|e| anyhow!(e.to_string()))?;
            writeln!(
                out,
                "{moved} keys rewrapped under {}, {current} already under it",
                service.keks().active().id()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `keys generate ID`: the ring key ID, a pkcs11 key, created in its token.
fn keys_generate(config: &Path, id: &str) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let spec = keys_of(&cfg, config)?;
    let key = spec
        .keys
        .iter()
        .find(|k| k.id == id)
        .ok_or_else(|| anyhow!("{}: no key {id:?} in keys.ring", config.display()))?;
    match &key.source {
        fieldseal::crypto::KeySource::Pkcs11(p) => {
            fieldseal::crypto::pkcs11::generate(id, p).map_err(|e| anyhow!(e))?;
            println!(
                "created AES-256 key {:?} in token {:?} for ring key {id} (sensitive, not extractable)",
                p.label, p.token
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(anyhow!(
            "key {id:?} is a {} key: `keys generate` creates pkcs11 keys; use `fieldseal keygen FILE` for a key file",
            other.kind()
        )),
    }
}

fn keys_cmd(config: &Path, scan: bool) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let spec = keys_of(&cfg, config)?;
    let mut out = std::io::stdout().lock();
    if !scan {
        let ring = load_ring(&cfg, config)?;
        let width = spec.keys.iter().map(|k| k.id.len()).max().unwrap_or(0);
        for k in &spec.keys {
            let source = k.source.kind();
            let active = if k.id == spec.active {
                "  (active)"
            } else {
                ""
            };
            if let fieldseal::crypto::KeySource::Pkcs11(p) = &k.source {
                // No bytes to fingerprint: what the token says of the key,
                // and its check value computed by the token.
                let kek = fieldseal::crypto::pkcs11::Pkcs11Kek::new(&k.id, p.clone());
                let shown = match kek.describe() {
                    Ok(i) => format!(
                        "token {:?} (serial {}) label {:?}: {} {} bits, sensitive={}, extractable={}, check value {}",
                        p.token,
                        i.token_serial,
                        p.label,
                        i.key_type,
                        i.bits,
                        i.sensitive,
                        i.extractable,
                        i.check_value.as_deref().unwrap_or("(not given by the token)")
                    ),
                    Err(e) => format!("token {:?} label {:?}: unavailable: {e}", p.token, p.label),
                };
                writeln!(out, "{:<width$}  {source:<10}  {shown}{active}", k.id)?;
                continue;
            }
            let fp = ring.fingerprint(&k.id).unwrap_or_default();
            writeln!(
                out,
                "{:<width$}  {source:<10}  fingerprint {fp}{active}",
                k.id
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for k in &spec.keys {
        let active = if k.id == spec.active {
            "  (active)"
        } else {
            ""
        };
        writeln!(out, "{}{}", k.id, active)?;
    }
    let census = offline::key_census(
        std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock()),
        offline::Progress::on_stderr("scan", stdin_size()),
    )?;
    // With unreadable input every count is only a lower bound, and says so.
    let count = |n: u64| {
        if census.complete() {
            n.to_string()
        } else {
            format!("at least {n}")
        }
    };
    writeln!(out, "\nenvelopes per key id:")?;
    let in_ring = |id: &str| spec.keys.iter().any(|k| k.id == id);
    let mut ids: Vec<&str> = spec.keys.iter().map(|k| k.id.as_str()).collect();
    for id in census.envelopes.keys().chain(census.embedded.keys()) {
        if !ids.contains(&id.as_str()) {
            ids.push(id);
        }
    }
    for id in ids {
        let whole = census.envelopes.get(id).copied().unwrap_or(0);
        let inside = census.embedded.get(id).copied().unwrap_or(0);
        let mut notes = Vec::new();
        if inside > 0 {
            notes.push(format!(
                "{inside} of them inside longer strings or member names, which rewrap does not re-encrypt"
            ));
        }
        if !in_ring(id) {
            notes.push("NOT IN RING: these cannot be decrypted".to_string());
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join("; "))
        };
        writeln!(out, "  {id}: {}{notes}", count(whole + inside))?;
    }
    if census.malformed > 0 {
        writeln!(
            out,
            "  strings that start with fs1: but name no valid key id: {}",
            count(census.malformed)
        )?;
    }
    writeln!(
        out,
        "scanned {} documents ({} lines)",
        census.documents, census.lines
    )?;
    if census.complete() {
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<String> = census
        .unreadable
        .iter()
        .take(10)
        .map(|f| f.line.to_string())
        .collect();
    let more = if census.unreadable.len() > 10 {
        ", ..."
    } else {
        ""
    };
    writeln!(
        out,
        "INCOMPLETE: {} of {} documents could not be read (line {}{more}); the counts above are \
         lower bounds: do not retire a key on them",
        census.unreadable.len(),
        census.documents,
        lines.join(", ")
    )?;
    for f in census.unreadable.iter().take(10) {
        eprintln!("fieldseal keys --scan: {f}");
    }
    Ok(ExitCode::from(EXIT_DATA))
}

/// `audit verify`: the chain from genesis (or `from`), up to `expect` if given.
fn audit_verify_cmd(
    file: &Path,
    config: &Path,
    from: Option<&fieldseal::audit::ChainHead>,
    expect: Option<&fieldseal::audit::ChainHead>,
) -> Result<ExitCode> {
    use fieldseal::audit::{VerifyError, VerifyOptions};
    let cfg = Config::load(config)?;
    let ring = load_ring(&cfg, config)?;
    let f = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
    let result =
        fieldseal::audit::verify_with(BufReader::new(f), VerifyOptions { from, expect }, |kid| {
            ring.derive_subkey(kid, fieldseal::audit::KEY_PURPOSE)
        });
    match result {
        Ok(report) => {
            let span = match (&report.last, from) {
                (Some(last), _) => format!(
                    ", chain intact from seq {} to seq {}",
                    from.map_or(1, |h| h.seq + 1),
                    last.seq
                ),
                (None, _) => String::new(),
            };
            println!("{}: ok: {} lines{span}", file.display(), report.lines);
            match report.last.as_ref().or(from) {
                Some(head) => println!("head: {head}"),
                None => println!("head: none (empty log)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Io(e)) => Err(anyhow!("{}: {e}", file.display())),
        Err(e @ VerifyError::Options(_)) => {
            eprintln!("fieldseal audit verify: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e @ VerifyError::KeyMismatch { .. }) => {
            eprintln!("{}: {e}", file.display());
            Ok(ExitCode::from(EXIT_KEY_MISMATCH))
        }
        Err(e @ VerifyError::Tampered { .. }) => {
            eprintln!("{}: {e}", file.display());
            Ok(ExitCode::from(EXIT_DATA))
        }
    }
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled, so a signal sent as soon as the demo
/// says it is ready (or `run` logs that it serves) is not a default-action
/// kill that skips the drain and the demo's cleanup.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn spawn_reload_on_hup(proxy: Proxy) {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed now, not in the task: SIGHUP's default action ends the process.
    let hup = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let Ok(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading");
            let _ = proxy.reload().await;
        }
    });
}

async fn serve(cfg: Config) -> Result<()> {
    let listeners = Listeners::bind(&cfg).await?;
    let summary = cfg.summary();
    let admin = cfg.admin;
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "configuration");
    }
    let proxy = tokio::task::spawn_blocking(move || Proxy::new(cfg)).await??;
    let admin = admin.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(%summary, %admin, "fieldseal serving");
    spawn_reload_on_hup(proxy.clone());
    proxy.serve(listeners, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn demo(listen: SocketAddr, mut dir: fieldseal::demo::DemoDir) -> Result<()> {
    use fieldseal::demo::{DemoAddrs, DevIssuer, SubjectGuide, TOKEN_LIFETIME};
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    tokio::spawn(fieldseal::demo::start_backend(backend));
    // The development issuer: its key set served over HTTP, so the proxy
    // fetches it from `jwks_url` as it would from a real identity provider.
    let jwks = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addrs = DemoAddrs {
        listen,
        backend: backend_addr,
        issuer: jwks.local_addr()?,
    };
    let issuer = DevIssuer::generate(addrs.issuer_url()).map_err(anyhow::Error::msg)?;
    tokio::spawn(fieldseal::demo::serve_jwks(jwks, issuer.jwks().to_owned()));
    let https = fieldseal::bind_shared("listen.address", listen)
        .with_context(|| format!("cannot listen on {listen} (try --listen 127.0.0.1:0)"))?;
    let addrs = DemoAddrs {
        listen: https.local_addr()?,
        ..addrs
    };
    let path = dir.write(&addrs).map_err(anyhow::Error::msg)?;
    let cfg = Config::load(&path)?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin.local_addr()?;
    let proxy = tokio::task::spawn_blocking(move || Proxy::new(cfg)).await??;
    let shutdown = shutdown_signal();
    let token = |sub: &str| {
        issuer
            .token(sub, TOKEN_LIFETIME)
            .map_err(anyhow::Error::msg)
    };
    let guide = SubjectGuide {
        jwks_url: addrs.jwks_url(),
        alice: token("alice")?,
        bob: token("bob")?,
        admin_token: dir
            .admin_token()
            .ok_or_else(|| anyhow!("the demo wrote no admin token"))?
            .to_owned(),
        program: std::env::current_exe().context("the path of this program")?,
        config: path.clone(),
    };
    println!(
        "{}",
        fieldseal::demo::instructions(addrs.listen, backend_addr, admin_addr, dir.path(), &guide)
    );
    drop(guide);
    let _ = std::io::stdout().flush();
    spawn_reload_on_hup(proxy.clone());
    proxy
        .serve(
            Listeners {
                https,
                redirect: None,
                admin: Some(admin),
            },
            shutdown,
        )
        .await;
    for note in dir.remove().map_err(anyhow::Error::msg)? {
        eprintln!("fieldseal demo: {note}");
    }
    Ok(())
}

/// Problems one per line, as `check` prints them.
fn lines(errors: &[fieldseal::config::ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `fieldseal check`: exit 0 with warnings and a summary, or 1 with every
/// problem found.
fn check(path: &Path, open_files: bool) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let report = if open_files {
        fieldseal::config::preflight::check(&cfg)
    } else {
        fieldseal::config::preflight::Report::default()
    };
    for w in cfg.warnings.iter().chain(&report.warnings) {
        eprintln!("{}: warning: {w}", path.display());
    }
    if !report.errors.is_empty() {
        eprintln!("{}", lines(&report.errors));
        return ExitCode::FAILURE;
    }
    let skipped = if open_files {
        ""
    } else {
        " (--no-load: certificates, keys, the audit file and environment variables not checked)"
    };
    println!("{}: ok: {}{skipped}", path.display(), cfg.summary());
    ExitCode::SUCCESS
}

/// `fieldseal init`: the starter files, then what to do next.
fn init(dir: &Path, listen: SocketAddr, admin: SocketAddr, upstream: &str) -> Result<ExitCode> {
    let opts = fieldseal::init::Options {
        listen,
        admin,
        upstream: upstream.to_string(),
    };
    let written = fieldseal::init::write(dir, &opts).map_err(anyhow::Error::msg)?;
    for p in &written {
        println!("wrote {}", p.display());
    }
    let config = dir.join(fieldseal::init::CONFIG_FILE);
    println!(
        "\nnext:\n  fieldseal check --config {0}\n  fieldseal run --config {0}\n\n\
         certs/ holds a self-signed development certificate: replace it for production.\n\
         keys/k1.key is a real key: back it up; what it seals cannot be opened without it.",
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Generated output to stdout; a reader that stops early (`| head`) is not
/// an error.
fn print_out(bytes: impl AsRef<[u8]>) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes.as_ref()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `fieldseal man`: the top page on stdout, or every page into a folder.
fn man(out_dir: Option<&Path>) -> Result<ExitCode> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match out_dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            return print_out(page);
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).with_context(|| format!("{}", dir.display()))?;
            println!("wrote man pages into {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match fieldseal::config::parse_duration(s)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// `fieldseal healthcheck`: one GET on the admin listener.
fn healthcheck(
    config: Option<&Path>,
    address: Option<SocketAddr>,
    ready: bool,
    timeout: std::time::Duration,
) -> Result<ExitCode> {
    let address = match (address, config) {
        (Some(a), _) => a,
        (None, Some(c)) => fieldseal::healthcheck::admin_address(c).map_err(anyhow::Error::msg)?,
        (None, None) => fieldseal::healthcheck::DEFAULT_ADMIN,
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    match fieldseal::healthcheck::probe(address, path, timeout) {
        Ok(()) => {
            println!("{address}{path}: ok");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("fieldseal healthcheck: {address}{path}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
