//! Tamper-evident audit log: one JSON line per proxied request that touched
//! protected fields, chained with HMAC-SHA256 so that edits, removals,
//! insertions and reordering are detectable by [`verify`].
//!
//! Line layout (members always in this order, written by this module):
//!
//! ```text
//! {"audit":1,"seq":N,"ts":"…Z","kid":"k2","prev":"<hex>","request_id":"…","route":"…",
//!  "client":"…","user_agent":"ua1:<hex>"|null,"method":"…","fields":[…],"key_ids":[…],
//!  "encrypted":N,"decrypted":N,"outcome":"…"[,"reader":"…","subjects":[…]],"mac":"<hex>"}
//! ```
//!
//! `reader` and `subjects` are present only on a line of a read of other
//! subjects' data under a `read_any_subject` role (opaque references).
//!
//! `mac = HMAC-SHA256(key[kid], prev_mac_raw ‖ content)`, where `content` is the
//! exact bytes of the line with the trailing `,"mac":"…"` member removed (so it
//! ends in `}`) and `prev_mac_raw` is the previous line's MAC as 32 raw bytes
//! (32 zero bytes for the first line of a chain). The verifier never
//! re-serializes: it MACs the bytes it read, so JSON key-order or number
//! formatting quirks cannot matter. See `docs/audit.md`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Format version, the first member of every line; also a marker that lets
/// audit lines be filtered out of a stdout stream shared with other logs.
const FORMAT_VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const GENESIS: [u8; MAC_LEN] = [0u8; MAC_LEN];
/// `,"mac":"` + 64 hex digits + `"}`.
const MAC_SUFFIX_PREFIX: &[u8] = b",\"mac\":\"";
const MAC_SUFFIX_LEN: usize = MAC_SUFFIX_PREFIX.len() + 2 * MAC_LEN + 2;
/// Bound on how far `open` scans backwards for the last line; a longer line
/// is not something `append` writes, so treat it as corruption.
const MAX_LINE: u64 = 1024 * 1024;

/// HKDF purpose of the audit log's HMAC sub-key (`Keyring::derive_subkey`).
pub const KEY_PURPOSE: &str = "fieldseal audit log v1";

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for AuditSink {
    type Err = std::convert::Infallible;
    /// `stdout` (or `-`) selects standard output; anything else is a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "stdout" || s == "-" {
            AuditSink::Stdout
        } else {
            AuditSink::File(PathBuf::from(s))
        })
    }
}

/// What the proxy does when an audit line cannot be written
/// (config `audit.on_failure`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailureMode {
    /// Answer 503: no protected-field traffic without an audit record.
    #[default]
    Refuse,
    /// Serve the request anyway and count the failure.
    Serve,
}

/// The HMAC sub-key for the audit chain and the id recorded as `kid`.
pub struct AuditKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
    /// Derived from `key`, for user-agent fingerprints only.
    fingerprint_key: Zeroizing<[u8; 32]>,
}

/// What the fingerprint sub-key is derived for (never a chain input).
const FINGERPRINT_PURPOSE: &[u8] = b"fieldseal audit user-agent fingerprint v1";

impl AuditKey {
    pub fn new(id: String, key: Zeroizing<[u8; 32]>) -> Self {
        let fingerprint_key = Zeroizing::new(hmac_sha256(&key, FINGERPRINT_PURPOSE));
        AuditKey {
            id,
            key,
            fingerprint_key,
        }
    }

    /// The keyed fingerprint written in place of a User-Agent: `ua1:` and
    /// the first 8 bytes (16 hex digits) of HMAC-SHA256 under a sub-key of
    /// this audit key. The same agent gives the same fingerprint under one
    /// key (`kid`), so lines correlate; the string the client sent is never
    /// written (it is client-supplied, and can be anything: a token, a
    /// field value, a line of forged log).
    pub fn user_agent_fingerprint(&self, user_agent: &str) -> String {
        let mac = hmac_sha256(&self.fingerprint_key, user_agent.as_bytes());
        format!("ua1:{}", hex_encode(&mac[..8]))
    }
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for AuditKey {
    // Never print key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// One proxied request that encrypted or decrypted fields. Carries the
/// JSONPath rules that matched, never field values.
#[derive(serde::Serialize, Clone, Debug, Default)]
pub struct AuditEvent {
    pub request_id: String,
    pub route: String,
    pub client: String,
    /// The client's User-Agent, as sent. Written as its keyed fingerprint
    /// ([`AuditKey::user_agent_fingerprint`]), never as it is.
    pub user_agent: Option<String>,
    pub method: String,
    pub fields: Vec<String>,
    pub key_ids: Vec<String>,
    pub encrypted: usize,
    pub decrypted: usize,
    pub outcome: String,
}

/// Who read whose data under a `read_any_subject` role: opaque subject
/// references (never raw subject ids), written as the line's `reader` and
/// `subjects` members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAccess {
    pub reader: String,
    pub subjects: Vec<String>,
}

/// The position of a chain: the last line's sequence number and MAC (hex).
/// Ship it somewhere the log's writer cannot rewrite to detect tail
/// truncation, and pass it to [`verify_from`] to verify a file that continues
/// an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub mac: String,
}

/// Header members, stamped under the lock. Field order here IS the line's
/// member order; do not reorder.
#[derive(Serialize)]
struct HeaderOut<'a> {
    audit: u8,
    seq: u64,
    ts: &'a str,
    kid: &'a str,
    prev: &'a str,
}

/// Event members, serialized outside the lock. Field order is the line's order.
#[derive(Serialize)]
struct EventOut<'a> {
    request_id: &'a str,
    route: &'a str,
    client: &'a str,
    user_agent: Option<&'a str>,
    method: &'a str,
    fields: &'a [String],
    key_ids: &'a [String],
    encrypted: usize,
    decrypted: usize,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reader: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subjects: Option<&'a [String]>,
}

/// Everything a line holds except `mac`. Strict: an unknown or duplicate
/// member makes the line malformed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // event members are parsed only to enforce the schema
struct LineIn {
    audit: u8,
    seq: u64,
    ts: String,
    kid: String,
    prev: String,
    request_id: String,
    route: String,
    client: String,
    user_agent: Option<String>,
    method: String,
    fields: Vec<String>,
    key_ids: Vec<String>,
    encrypted: u64,
    decrypted: u64,
    outcome: String,
    #[serde(default)]
    reader: Option<String>,
    #[serde(default)]
    subjects: Option<Vec<String>>,
}

enum Writer {
    Stdout(io::Stdout),
    File(File),
}

struct State {
    writer: Writer,
    seq: u64,
    mac: [u8; MAC_LEN],
    /// Set when a write failed after some bytes landed: the sink now ends in
    /// a partial line, and appending after it would corrupt the chain.
    poisoned: bool,
}

/// A shared, append-only, HMAC-chained audit log.
pub struct AuditLog {
    key: AuditKey,
    sink: AuditSink,
    /// Shared with `rekeyed` handles: one writer, one chain.
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("sink", &self.sink)
            .field("kid", &self.key.id)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (append) the sink. For an existing non-empty file, resumes the
    /// chain from its last line (reads seq and mac of the last line; if the
    /// last line is not a valid audit line, refuses with an error rather than
    /// start a new chain silently). If the last line was written under the
    /// same key id, its MAC is checked too. Stdout always starts a new chain.
    pub fn open(sink: AuditSink, key: AuditKey) -> io::Result<AuditLog> {
        let (writer, seq, mac) = match &sink {
            AuditSink::Stdout => (Writer::Stdout(io::stdout()), 0, GENESIS),
            AuditSink::File(path) => {
                let mut opts = OpenOptions::new();
                opts.read(true).append(true).create(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    // Client addresses are personal data.
                    opts.mode(0o600);
                }
                let mut file = opts.open(path)?;
                // Only a regular file has a last line to resume from: a
                // FIFO or a device (a log shipper's pipe, /dev/stderr)
                // starts a new chain like stdout, instead of a read that
                // would block the load.
                let last = if file.metadata()?.is_file() {
                    read_last_line(&mut file)?
                } else {
                    None
                };
                let (seq, mac) = match last {
                    None => (0, GENESIS),
                    Some(last) => resume_point(&last, &key).map_err(|why| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "audit log {}: last line is not a valid audit line ({why}); \
                                 refusing to start a new chain: verify the file and move it aside",
                                path.display()
                            ),
                        )
                    })?,
                };
                (Writer::File(file), seq, mac)
            }
        };
        Ok(AuditLog {
            key,
            sink,
            state: Arc::new(Mutex::new(State {
                writer,
                seq,
                mac,
                poisoned: false,
            })),
        })
    }

    /// Another handle on the same sink and chain whose lines are MACed under
    /// `key` (audit key rotation on reload). Lines appended through either
    /// handle continue one chain, so a request still in flight on the old
    /// handle cannot fork it, and a stdout chain does not restart at seq 1.
    pub fn rekeyed(&self, key: AuditKey) -> AuditLog {
        AuditLog {
            key,
            sink: self.sink.clone(),
            state: Arc::clone(&self.state),
        }
    }

    /// Stamps time, seq, prev, kid, mac; writes one line with a single write
    /// and flushes. Blocking, but the critical section is one short write.
    pub fn append(&self, event: &AuditEvent) -> io::Result<()> {
        self.append_with(event, None)
    }

    /// [`append`](Self::append), with who read whose data under a role.
    pub fn append_with(
        &self,
        event: &AuditEvent,
        access: Option<&SubjectAccess>,
    ) -> io::Result<()> {
        // Serialize the event members before taking the lock.
        let user_agent = event
            .user_agent
            .as_deref()
            .map(|ua| self.key.user_agent_fingerprint(ua));
        let body = serde_json::to_vec(&EventOut {
            request_id: &event.request_id,
            route: &event.route,
            client: &event.client,
            user_agent: user_agent.as_deref(),
            method: &event.method,
            fields: &event.fields,
            key_ids: &event.key_ids,
            encrypted: event.encrypted,
            decrypted: event.decrypted,
            outcome: &event.outcome,
            reader: access.map(|a| a.reader.as_str()),
            subjects: access.map(|a| a.subjects.as_slice()),
        })
        .map_err(io::Error::other)?;

        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("audit log lock poisoned"))?;
        if state.poisoned {
            return Err(io::Error::other(
                "audit log sink ends in a partial line after an earlier write error; restart required",
            ));
        }
        let seq = state
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("audit sequence exhausted"))?;
        // Stamped under the lock so timestamps never go backwards along seq.
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let prev = hex_encode(&state.mac);
        let header = serde_json::to_vec(&HeaderOut {
            audit: FORMAT_VERSION,
            seq,
            ts: &ts,
            kid: &self.key.id,
            prev: &prev,
        })
        .map_err(io::Error::other)?;

        // content = header without its `}` + `,` + body without its `{`.
        let mut line = Vec::with_capacity(header.len() + body.len() + MAC_SUFFIX_LEN + 1);
        line.extend_from_slice(&header[..header.len() - 1]);
        line.push(b',');
        line.extend_from_slice(&body[1..]);
        let mac = compute_mac(&self.key.key, &state.mac, &line)?;
        line.truncate(line.len() - 1);
        line.extend_from_slice(MAC_SUFFIX_PREFIX);
        line.extend_from_slice(hex_encode(&mac).as_bytes());
        line.extend_from_slice(b"\"}\n");

        let written = match &mut state.writer {
            Writer::Stdout(out) => write_once(&mut out.lock(), &line),
            Writer::File(file) => write_once(file, &line),
        };
        match written {
            Ok(()) => {
                state.seq = seq;
                state.mac = mac;
                Ok(())
            }
            Err((0, e)) => Err(e), // nothing landed: the chain is intact, a retry is safe
            Err((_, e)) => {
                state.poisoned = true;
                Err(e)
            }
        }
    }

    /// The current chain head (seq 0 and the all-zero MAC before any line).
    /// Publish it elsewhere periodically so tail truncation becomes detectable.
    pub fn head(&self) -> io::Result<ChainHead> {
        let state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("audit log lock poisoned"))?;
        Ok(ChainHead {
            seq: state.seq,
            mac: hex_encode(&state.mac),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key.id
    }
}

/// Writes all of `buf` and flushes; on error reports how many bytes landed.
fn write_once(w: &mut dyn Write, buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    w.flush().map_err(|e| (done, e))
}

/// Reads the file's last line (without its newline); `None` if empty.
/// A non-empty file must end in `\n`, otherwise the last write was partial.
fn read_last_line(file: &mut File) -> io::Result<Option<Vec<u8>>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "audit log does not end with a newline (partial write?); refusing to resume the chain",
        ));
    }
    // Scan backwards in chunks for the newline that precedes the last line.
    let end = len - 1;
    let mut start = end;
    let mut chunk = vec![0u8; 8192];
    'scan: while start > 0 {
        let step = start.min(chunk.len() as u64);
        let from = start - step;
        file.seek(SeekFrom::Start(from))?;
        let buf = &mut chunk[..step as usize];
        file.read_exact(buf)?;
        for (i, b) in buf.iter().enumerate().rev() {
            if *b == b'\n' {
                start = from + i as u64 + 1;
                break 'scan;
            }
        }
        start = from;
        if end - start > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "audit log's last line is longer than any line fieldseal writes",
            ));
        }
    }
    let mut line = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Some(line))
}

/// Seq and MAC to continue from, given the file's last line.
fn resume_point(last: &[u8], key: &AuditKey) -> Result<(u64, [u8; MAC_LEN]), String> {
    let line = parse_line(last)?;
    if line.kid == key.id {
        let ok = mac_matches(&key.key, &line.prev, &line.content, &line.mac)
            .map_err(|e| e.to_string())?;
        if !ok {
            return Err(format!(
                "its MAC does not verify under key {:?} (edited?)",
                key.id
            ));
        }
    }
    Ok((line.seq, line.mac))
}

/// A line split into what is MACed and the claimed values.
struct Parsed {
    /// The exact bytes the MAC covers: the line minus the `mac` member.
    content: Vec<u8>,
    seq: u64,
    kid: String,
    prev: [u8; MAC_LEN],
    mac: [u8; MAC_LEN],
}

fn parse_line(raw: &[u8]) -> Result<Parsed, String> {
    if raw.len() < MAC_SUFFIX_LEN + 2 || !raw.starts_with(b"{") {
        return Err("not an audit line".into());
    }
    let (head, suffix) = raw.split_at(raw.len() - MAC_SUFFIX_LEN);
    let hex = suffix
        .strip_prefix(MAC_SUFFIX_PREFIX)
        .and_then(|s| s.strip_suffix(b"\"}"))
        .ok_or("line does not end with the \"mac\" member")?;
    let mac = hex_decode(hex).ok_or("\"mac\" is not 64 lowercase hex digits")?;
    let mut content = Vec::with_capacity(head.len() + 1);
    content.extend_from_slice(head);
    content.push(b'}');
    let fields: LineIn =
        serde_json::from_slice(&content).map_err(|e| format!("invalid line content: {e}"))?;
    if fields.audit != FORMAT_VERSION {
        return Err(format!("unsupported audit format {}", fields.audit));
    }
    let prev =
        hex_decode(fields.prev.as_bytes()).ok_or("\"prev\" is not 64 lowercase hex digits")?;
    Ok(Parsed {
        content,
        seq: fields.seq,
        kid: fields.kid,
        prev,
        mac,
    })
}

fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; MAC_LEN] {
    // HMAC takes a key of any length: this cannot fail.
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        unreachable!("HMAC accepts a key of any length")
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

fn compute_mac(key: &[u8; 32], prev: &[u8; MAC_LEN], content: &[u8]) -> io::Result<[u8; MAC_LEN]> {
    let mut m = HmacSha256::new_from_slice(key).map_err(io::Error::other)?;
    m.update(prev);
    m.update(content);
    Ok(m.finalize().into_bytes().into())
}

fn mac_matches(
    key: &[u8; 32],
    prev: &[u8; MAC_LEN],
    content: &[u8],
    mac: &[u8; MAC_LEN],
) -> io::Result<bool> {
    let mut m = HmacSha256::new_from_slice(key).map_err(io::Error::other)?;
    m.update(prev);
    m.update(content);
    // verify_slice compares in constant time.
    Ok(m.verify_slice(mac).is_ok())
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Lowercase only, so each MAC has exactly one spelling.
fn hex_decode(hex: &[u8]) -> Option<[u8; MAC_LEN]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * MAC_LEN {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// A whole log verified without finding tampering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines read and verified.
    pub lines: u64,
    /// The last line's seq and MAC (`None` for an empty log): compare it with
    /// an externally shipped anchor to detect tail truncation.
    pub last: Option<ChainHead>,
}

/// How a log was found to be tampered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TamperKind {
    /// The line's own MAC fails and the chain continues through it.
    Edited,
    /// One or more lines are missing before this one.
    Removed,
    /// This line does not belong here: a copy, a replay, or a forgery.
    Inserted,
    /// The expected line appears later: lines were swapped or moved.
    Reordered,
    /// The line's `kid` has no key.
    UnknownKey,
    /// Not an audit line (bad JSON, missing members, partial write).
    Malformed,
    /// The log ends before the expected head (`verify_with`'s `expect`):
    /// lines were removed from its end.
    Truncated,
    /// The line at the expected head's seq verifies but has another MAC:
    /// the log was rewritten up to there by someone holding the key, or it
    /// is another log.
    Rewritten,
}

impl fmt::Display for TamperKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TamperKind::Edited => "edited",
            TamperKind::Removed => "removed",
            TamperKind::Inserted => "inserted",
            TamperKind::Reordered => "reordered",
            TamperKind::UnknownKey => "unknown key",
            TamperKind::Malformed => "malformed",
            TamperKind::Truncated => "truncated",
            TamperKind::Rewritten => "rewritten",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Said whole (no source to repeat).
    #[error("reading the audit log: {0}")]
    Io(io::Error),
    /// `line` is 1-based, counting physical lines of the input.
    #[error("audit log line {line}: {kind}: {detail}")]
    Tampered {
        line: u64,
        kind: TamperKind,
        detail: String,
    },
    /// No line under `kid` verifies with the key given for it, from `line`
    /// on: the key is not the one the log was written with (or every one of
    /// its lines was altered, which the verifier cannot tell apart). Not a
    /// verdict on the log: verify again with the right key.
    #[error("audit log line {line}: key mismatch for kid {kid:?}: {detail}")]
    KeyMismatch {
        line: u64,
        kid: String,
        detail: String,
    },
    /// The options themselves are inconsistent (e.g. `expect` before `from`).
    #[error("{0}")]
    Options(String),
}

impl From<io::Error> for VerifyError {
    fn from(e: io::Error) -> VerifyError {
        VerifyError::Io(e)
    }
}

/// Where verification starts and what it must reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The log continues the chain after this head (its first line must be
    /// `seq + 1` with `prev` = `mac`); None: the log starts a chain.
    pub from: Option<&'a ChainHead>,
    /// A head recorded earlier (e.g. shipped off-host): the log must reach
    /// its seq with its MAC, which exposes a truncated or rewritten log.
    pub expect: Option<&'a ChainHead>,
}

impl std::str::FromStr for ChainHead {
    type Err = String;
    /// `SEQ:MAC`, as `fieldseal audit verify` prints a head.
    fn from_str(s: &str) -> Result<ChainHead, String> {
        let (seq, mac) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected SEQ:MAC"))?;
        let seq = seq
            .parse::<u64>()
            .map_err(|_| format!("{s:?}: SEQ is not a number"))?;
        if hex_decode(mac.as_bytes()).is_none() {
            return Err(format!("{s:?}: MAC is not 64 lowercase hex digits"));
        }
        Ok(ChainHead {
            seq,
            mac: mac.to_string(),
        })
    }
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.mac)
    }
}

/// Verifies a whole log that starts a chain (first line seq 1, prev all
/// zeros); `key_for(kid)` returns the audit key bytes for an id. Reports the
/// first bad line; see `docs/audit.md` for which line each kind points at.
pub fn verify<R: BufRead>(
    reader: R,
    key_for: impl Fn(&str) -> Option<Zeroizing<[u8; 32]>>,
) -> Result<VerifyReport, VerifyError> {
    verify_from(reader, None, key_for)
}

/// Like [`verify`], but the log continues the chain after `after` (e.g. a
/// file started after the previous one was rotated away); `None` = genesis.
pub fn verify_from<R: BufRead>(
    reader: R,
    after: Option<&ChainHead>,
    key_for: impl Fn(&str) -> Option<Zeroizing<[u8; 32]>>,
) -> Result<VerifyReport, VerifyError> {
    verify_with(
        reader,
        VerifyOptions {
            from: after,
            expect: None,
        },
        key_for,
    )
}

/// [`verify`] with a starting head and an expected head (see
/// [`VerifyOptions`]).
pub fn verify_with<R: BufRead>(
    reader: R,
    opts: VerifyOptions<'_>,
    key_for: impl Fn(&str) -> Option<Zeroizing<[u8; 32]>>,
) -> Result<VerifyReport, VerifyError> {
    let (start_seq, start_mac) = match opts.from {
        None => (0, GENESIS),
        Some(h) => {
            let mac = hex_decode(h.mac.as_bytes()).ok_or_else(|| {
                VerifyError::Options("chain head MAC is not 64 lowercase hex digits".into())
            })?;
            (h.seq, mac)
        }
    };
    if let Some(e) = opts.expect {
        if hex_decode(e.mac.as_bytes()).is_none() {
            return Err(VerifyError::Options(
                "expected head MAC is not 64 lowercase hex digits".into(),
            ));
        }
        if e.seq < start_seq {
            return Err(VerifyError::Options(format!(
                "the expected head (seq {}) is before the start of this log (seq {})",
                e.seq,
                start_seq + 1
            )));
        }
        if e.seq == start_seq && e.mac != hex_encode(&start_mac) {
            return Err(VerifyError::Options(format!(
                "the expected head and the starting head disagree on seq {}",
                e.seq
            )));
        }
    }
    let mut v = Verifier {
        lines: Lines { reader, n: 0 },
        keys: Keys {
            key_for,
            cache: HashMap::new(),
        },
    };
    let mut expected_seq = start_seq.saturating_add(1);
    let mut expected_prev = start_mac;
    let mut last = None;
    // Key ids with at least one line that verified: a bad MAC under such a
    // kid is tampering, not a wrong key.
    let mut confirmed: HashSet<String> = HashSet::new();
    while let Some(raw) = v.lines.next_line()? {
        let n = v.lines.n;
        let tampered = |kind, detail| VerifyError::Tampered {
            line: n,
            kind,
            detail,
        };
        let line = match parse_raw(&raw) {
            Ok(l) => l,
            Err(detail) => return Err(tampered(TamperKind::Malformed, detail)),
        };
        let own_ok = match v.keys.check(&line)? {
            Some(ok) => ok,
            None => {
                return Err(tampered(
                    TamperKind::UnknownKey,
                    format!("no audit key for kid {:?}", line.kid),
                ))
            }
        };
        if !own_ok {
            if !confirmed.contains(&line.kid) {
                return Err(v.unconfirmed_bad_mac(&line, n, expected_seq, &expected_prev)?);
            }
            let (kind, detail) = v.classify_bad_mac(&line, expected_seq, &expected_prev)?;
            return Err(tampered(kind, detail));
        }
        confirmed.insert(line.kid.clone());
        if line.seq != expected_seq || line.prev != expected_prev {
            let (kind, detail) = v.classify_chain_break(&line, expected_seq, &expected_prev)?;
            return Err(tampered(kind, detail));
        }
        if let Some(e) = opts.expect {
            if e.seq == line.seq && e.mac != hex_encode(&line.mac) {
                return Err(tampered(
                    TamperKind::Rewritten,
                    format!(
                        "the line with seq {} verifies but its MAC is not the expected head's: \
                         the log was rewritten up to here by someone holding the audit key, or it is another log",
                        line.seq
                    ),
                ));
            }
        }
        expected_seq = line.seq.saturating_add(1);
        expected_prev = line.mac;
        last = Some(ChainHead {
            seq: line.seq,
            mac: hex_encode(&line.mac),
        });
    }
    if let Some(e) = opts.expect {
        let reached = last.as_ref().map_or(start_seq, |h| h.seq);
        if reached < e.seq {
            return Err(VerifyError::Tampered {
                line: v.lines.n + 1,
                kind: TamperKind::Truncated,
                detail: format!(
                    "the log ends at seq {reached}, before the expected head at seq {}: \
                     {} line(s) are missing from its end",
                    e.seq,
                    e.seq - reached
                ),
            });
        }
    }
    Ok(VerifyReport {
        lines: v.lines.n,
        last,
    })
}

/// Lines without their `\n`; an unterminated last line is kept as-is with a
/// marker so it is reported as a partial write.
struct Lines<R> {
    reader: R,
    n: u64,
}

enum RawLine {
    Complete(Vec<u8>),
    Unterminated,
}

impl<R: BufRead> Lines<R> {
    fn next_line(&mut self) -> io::Result<Option<RawLine>> {
        let mut buf = Vec::new();
        if self.reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        self.n += 1;
        if buf.pop() == Some(b'\n') {
            Ok(Some(RawLine::Complete(buf)))
        } else {
            Ok(Some(RawLine::Unterminated))
        }
    }
}

fn parse_raw(raw: &RawLine) -> Result<Parsed, String> {
    match raw {
        RawLine::Complete(bytes) => parse_line(bytes),
        RawLine::Unterminated => Err("last line has no newline (partial write?)".into()),
    }
}

struct Keys<F> {
    key_for: F,
    /// One lookup per kid; keys stay zeroized on drop.
    cache: HashMap<String, Option<Zeroizing<[u8; 32]>>>,
}

impl<F: Fn(&str) -> Option<Zeroizing<[u8; 32]>>> Keys<F> {
    /// `None` if the kid has no key, else whether the line's own MAC holds
    /// (computed over the prev it claims; the chain is checked separately).
    fn check(&mut self, line: &Parsed) -> io::Result<Option<bool>> {
        let key = self
            .cache
            .entry(line.kid.clone())
            .or_insert_with(|| (self.key_for)(&line.kid));
        match key {
            None => Ok(None),
            Some(k) => mac_matches(k, &line.prev, &line.content, &line.mac).map(Some),
        }
    }

    /// Whether a raw line is authentic and sits exactly at (seq, prev).
    fn is_authentic_at(
        &mut self,
        raw: &RawLine,
        seq: u64,
        prev: &[u8; MAC_LEN],
    ) -> io::Result<bool> {
        let Ok(line) = parse_raw(raw) else {
            return Ok(false);
        };
        if line.seq != seq || line.prev != *prev {
            return Ok(false);
        }
        Ok(self.check(&line)? == Some(true))
    }
}

struct Verifier<R, F> {
    lines: Lines<R>,
    keys: Keys<F>,
}

impl<R: BufRead, F: Fn(&str) -> Option<Zeroizing<[u8; 32]>>> Verifier<R, F> {
    /// A bad MAC under a kid none of whose lines has verified yet: a wrong
    /// key fails every line of its kid, an edit fails only the lines it
    /// touched. So read on: if a later line under the same kid verifies,
    /// the key is right and this line was tampered with (classified as
    /// `classify_bad_mac` would); if none does, report a key mismatch, and
    /// whether the lines' `seq`/`prev` still chain (which needs no key).
    fn unconfirmed_bad_mac(
        &mut self,
        line: &Parsed,
        n: u64,
        expected_seq: u64,
        expected_prev: &[u8; MAC_LEN],
    ) -> io::Result<VerifyError> {
        let mut next_is_expected = None;
        let mut key_verifies = false;
        let mut lines_of_kid = 1u64;
        let mut in_place = line.seq == expected_seq && line.prev == *expected_prev;
        let mut break_at = (!in_place).then_some(n);
        let (mut prev_seq, mut prev_mac) = (line.seq, line.mac);
        while let Some(raw) = self.lines.next_line()? {
            if next_is_expected.is_none() {
                next_is_expected = Some(self.keys.is_authentic_at(
                    &raw,
                    expected_seq,
                    expected_prev,
                )?);
            }
            let Ok(other) = parse_raw(&raw) else {
                break_at.get_or_insert(self.lines.n);
                break;
            };
            if other.kid == line.kid {
                lines_of_kid += 1;
                if self.keys.check(&other)? == Some(true) {
                    key_verifies = true;
                    break;
                }
            }
            if other.seq != prev_seq.saturating_add(1) || other.prev != prev_mac {
                in_place = false;
                break_at.get_or_insert(self.lines.n);
            }
            (prev_seq, prev_mac) = (other.seq, other.mac);
        }
        if key_verifies {
            let (kind, detail) = if next_is_expected == Some(true) {
                (
                    TamperKind::Inserted,
                    format!(
                        "MAC does not verify and the next line continues the chain (seq {expected_seq}): a forged line"
                    ),
                )
            } else {
                (
                    TamperKind::Edited,
                    format!("MAC does not verify (line claims seq {})", line.seq),
                )
            };
            return Ok(VerifyError::Tampered {
                line: n,
                kind,
                detail,
            });
        }
        let structure = match break_at {
            None if in_place => "their seq and prev fields still chain from the last verified line \
                 to the end, as a log written under another key would"
                .to_string(),
            _ => format!(
                "their seq/prev fields also stop chaining at line {}, so lines may also have been removed, moved or edited",
                break_at.unwrap_or(n)
            ),
        };
        Ok(VerifyError::KeyMismatch {
            line: n,
            kid: line.kid.clone(),
            detail: format!(
                "none of the {lines_of_kid} line(s) under this kid from here on verifies with the key configured for it: \
                 the key is not the one the log was written with, or all of those lines were altered; {structure}"
            ),
        })
    }

    /// The line's own MAC fails. If the next line is the one expected here,
    /// this line was slipped in (a forgery); otherwise it was edited in place.
    fn classify_bad_mac(
        &mut self,
        line: &Parsed,
        expected_seq: u64,
        expected_prev: &[u8; MAC_LEN],
    ) -> io::Result<(TamperKind, String)> {
        if let Some(next) = self.lines.next_line()? {
            if self
                .keys
                .is_authentic_at(&next, expected_seq, expected_prev)?
            {
                return Ok((
                    TamperKind::Inserted,
                    format!(
                        "MAC does not verify and the next line continues the chain (seq {expected_seq}): a forged line"
                    ),
                ));
            }
        }
        Ok((
            TamperKind::Edited,
            format!("MAC does not verify (line claims seq {})", line.seq),
        ))
    }

    /// The line is authentic but not the one expected here.
    fn classify_chain_break(
        &mut self,
        line: &Parsed,
        expected_seq: u64,
        expected_prev: &[u8; MAC_LEN],
    ) -> io::Result<(TamperKind, String)> {
        if line.seq < expected_seq {
            // Every earlier seq has already been seen in order, so this one
            // is a second copy.
            return Ok((
                TamperKind::Inserted,
                format!(
                    "authentic line with seq {} repeated where seq {expected_seq} belongs (copy or replay)",
                    line.seq
                ),
            ));
        }
        if line.seq == expected_seq || line.prev == *expected_prev {
            // A genuine successor has both fields right; one right and one
            // wrong means a line from another chain under the same key.
            return Ok((
                TamperKind::Inserted,
                format!(
                    "authentic line with seq {} does not chain to the previous line (another chain's line)",
                    line.seq
                ),
            ));
        }
        // A gap. Read on: a later copy of this very line means it was
        // duplicated ahead of its place; the expected line appearing later
        // means lines were moved, provided this line's own predecessor (the
        // line whose MAC it names as prev) is also there; otherwise it came
        // from another chain. No expected line at all means removal.
        let mut found_expected_at = None;
        let mut predecessor_found = false;
        while let Some(raw) = self.lines.next_line()? {
            if let RawLine::Complete(bytes) = &raw {
                if let Ok(other) = parse_line(bytes) {
                    if other.mac == line.mac && other.content == line.content {
                        return Ok((
                            TamperKind::Inserted,
                            format!(
                                "copy of the line with seq {} (which appears again at line {}) inserted where seq {expected_seq} belongs",
                                line.seq, self.lines.n
                            ),
                        ));
                    }
                    // Its own MAC is checked if verification ever reaches it.
                    predecessor_found |=
                        other.seq.checked_add(1) == Some(line.seq) && other.mac == line.prev;
                }
            }
            if found_expected_at.is_none()
                && self
                    .keys
                    .is_authentic_at(&raw, expected_seq, expected_prev)?
            {
                found_expected_at = Some(self.lines.n);
            }
        }
        Ok(match found_expected_at {
            Some(at) if predecessor_found => (
                TamperKind::Reordered,
                format!(
                    "found seq {} where seq {expected_seq} belongs; seq {expected_seq} appears later at line {at}",
                    line.seq
                ),
            ),
            Some(_) => (
                TamperKind::Inserted,
                format!(
                    "authentic line with seq {} whose predecessor is not in this log (another chain's line) where seq {expected_seq} belongs",
                    line.seq
                ),
            ),
            None => (
                TamperKind::Removed,
                format!(
                    "found seq {} where seq {expected_seq} belongs: {} line(s) missing before this one",
                    line.seq,
                    line.seq - expected_seq
                ),
            ),
        })
    }
}
