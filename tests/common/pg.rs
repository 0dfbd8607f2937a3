//! A throw-away PostgreSQL cluster for the key-store suites: `initdb` in a
//! temp dir, `postgres` on a free 127.0.0.1 port with trust auth, run as the
//! `postgres` user when the tests run as root (initdb refuses root). A
//! watchdog stops the server when the test process goes away, so a failed
//! or killed run leaves nothing behind.
//!
//! Without PostgreSQL installed, `PgCluster::start` returns None and the
//! test skips with a message, unless `CI` or `FIELDSEAL_REQUIRE_PG` is set:
//! then it panics (CI must never skip these silently).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

fn pg_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("FIELDSEAL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    found.sort();
    found.pop()
}

fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("FIELDSEAL_REQUIRE_PG").is_some()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// A fresh cluster, or None (with a message) when PostgreSQL is not
    /// installed and not required.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = pg_bin() else {
            assert!(
                !required(),
                "PostgreSQL is not installed (apt-get install postgresql) and CI/FIELDSEAL_REQUIRE_PG is set"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql); set FIELDSEAL_REQUIRE_PG=1 to fail instead");
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster dir to postgres");
        }
        let c = PgCluster {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        let data = c.data();
        let out = c
            .command("initdb")
            .args(["-D", data.to_str().unwrap()])
            .args(["-U", "fieldseal", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.start_server();
        Some(c)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Starts the server (again) on `port`, with a watchdog that stops it
    /// when this process exits; waits until it accepts connections.
    pub fn start_server(&self) {
        let data = self.data();
        let log = self.dir.path().join("postgres.log");
        let script = format!(
            "'{bin}/postgres' -D '{data}' -p {port} -k '{sock}' -c listen_addresses=127.0.0.1 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
             >>'{log}' 2>&1 & pg=$!; \
             while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 1; done; \
             kill -INT $pg 2>/dev/null",
            bin = self.bin.display(),
            data = data.display(),
            port = self.port,
            sock = self.dir.path().display(),
            log = log.display(),
            parent = std::process::id(),
        );
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir(self.dir.path())
            .spawn()
            .expect("start postgres");
        // Reaped when the watchdog ends (the server stopped).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server now (fast shutdown: sessions are cut).
    pub fn stop_server(&self) {
        let out = self
            .command("pg_ctl")
            .args([
                "stop",
                "-m",
                "fast",
                "-w",
                "-D",
                self.data().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Serves TLS with `cert`/`key` (PEM files) and refuses TCP
    /// connections without it (`hostssl` only); restarts the server.
    pub fn require_tls(&self, cert: &Path, key: &Path) {
        let data = self.data();
        std::fs::copy(cert, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        use std::io::Write;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", data.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        self.stop_server();
        self.start_server();
    }

    /// A new, empty database; returns its URL (no password: trust auth).
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        format!(
            "postgres://fieldseal@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` in database `db` with psql; returns its unaligned output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "fieldseal",
            ])
            .args([
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Everything database `db` holds, as `pg_dump` writes it.
    pub fn dump(&self, db: &str) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "fieldseal",
                db,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump");
        out.stdout
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "stop",
                "-m",
                "immediate",
                "-D",
                self.data().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The database name in a URL `database` returned.
pub fn db_name(url: &str) -> &str {
    url.rsplit('/')
        .next()
        .and_then(|t| t.split('?').next())
        .unwrap_or("")
}
