//! The offline commands: `encrypt`, `decrypt`, `rewrap` and the key census
//! of `keys --scan`, all over one input reader ([`Reader`]), so the census
//! reads exactly the documents the transforms read.
//!
//! Input is one JSON document, several (concatenated or pretty-printed), a
//! JSON array (one document) or NDJSON; output is one compact document per
//! line. Line numbers are the input's, 1-based.
//!
//! Each document's bytes go through the proxy's own engine
//! (`transform`): what is not transformed is written as it was read, but
//! for the whitespace between tokens, so every copy of a repeated member
//! name is sealed, opened or counted, and escapes and numbers keep their
//! spelling.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crypto::{
    envelope_key_id, is_valid_key_id, looks_like_envelope, unix_now, Keyring, PREFIX,
};
use crate::routes::Route;
use crate::transform::{self, FieldRule, Keys, OpenSpec, SealSpec, StringKind, TransformError};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("route {0:?} has no {1} rules")]
    NoRules(String, &'static str),
    /// A tenant- or subject-scoped index without the per-record tenant
    /// (subject) path or key store it needs.
    #[error("route {0:?}: {1}")]
    Scope(String, &'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One input document that was not written: where it is and why, never
/// what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub document: u64,
    pub line: u64,
    pub last_line: u64,
    /// `invalid_json` or `transform`.
    pub kind: &'static str,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "input document {} ({}): {}",
            self.document,
            self.lines(),
            self.error
        )
    }
}

impl Failure {
    fn lines(&self) -> String {
        if self.last_line > self.line {
            format!("lines {}-{}", self.line, self.last_line)
        } else {
            format!("line {}", self.line)
        }
    }
}

// ---------------------------------------------------------------------------
// The one input reader
// ---------------------------------------------------------------------------

/// One document of the input, checked to be valid JSON.
#[derive(Debug)]
pub struct Document {
    /// 1-based count of documents read (failed ones included).
    pub number: u64,
    pub first_line: u64,
    pub last_line: u64,
    /// Its bytes as read.
    pub bytes: Vec<u8>,
}

/// What the reader found next.
#[derive(Debug)]
pub enum Item {
    Document(Document),
    /// Not valid JSON; reading goes on after it.
    Unreadable(Failure),
}

/// Splits the input into JSON documents by the JSON grammar: any run of
/// values separated by whitespace (NDJSON, concatenated or pretty-printed
/// documents, or one array).
///
/// A document that is not valid JSON is reported and reading goes on after
/// it. Once the input has shown itself to be NDJSON (every document so far
/// on one line), a broken line that would run into the following lines
/// (say, a truncated record) is reported as that one line, and from then
/// on each line must hold exactly one document: a line that does not is
/// reported as unreadable, never read as part of another document.
pub struct Reader<R> {
    input: R,
    /// Bytes handed back after a broken NDJSON line, read before `input`.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Line of the next byte, 1-based.
    line: u64,
    /// Whether the current line holds anything but whitespace so far.
    line_has_content: bool,
    bytes: u64,
    documents: u64,
    ndjson_so_far: bool,
    seen_one_line_document: bool,
    /// One document per line from here on.
    strict_lines: bool,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R) -> Reader<R> {
        Reader {
            input,
            pending: Vec::new(),
            pending_pos: 0,
            line: 1,
            line_has_content: false,
            bytes: 0,
            documents: 0,
            ndjson_so_far: true,
            seen_one_line_document: false,
            strict_lines: false,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Lines read so far (the last one counted even without a newline).
    pub fn lines_read(&self) -> u64 {
        self.line - u64::from(!self.line_has_content)
    }

    fn chunk(&mut self) -> io::Result<&[u8]> {
        if self.pending_pos < self.pending.len() {
            return Ok(&self.pending[self.pending_pos..]);
        }
        self.input.fill_buf()
    }

    /// Marks `n` bytes of the current chunk (`data`) read.
    fn consume(&mut self, data_newlines: usize, last_newline_at: Option<usize>, n: usize) {
        self.line += data_newlines as u64;
        if let Some(at) = last_newline_at {
            self.line_has_content = at + 1 < n;
        } else if n > 0 {
            self.line_has_content = true;
        }
        self.bytes += n as u64;
        if self.pending_pos < self.pending.len() {
            self.pending_pos += n;
            if self.pending_pos == self.pending.len() {
                self.pending.clear();
                self.pending_pos = 0;
            }
        } else {
            self.input.consume(n);
        }
    }

    /// Skips whitespace; false at the end of the input.
    fn skip_whitespace(&mut self) -> io::Result<bool> {
        loop {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                return Ok(false);
            }
            let n = chunk
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                .unwrap_or(chunk.len());
            let newlines = chunk[..n].iter().filter(|b| **b == b'\n').count();
            let last_nl = chunk[..n].iter().rposition(|b| *b == b'\n');
            let more = n < chunk.len();
            // Whitespace only: a line's content flag changes only at newlines.
            let had = self.line_has_content;
            self.consume(newlines, last_nl, n);
            if last_nl.is_none() {
                self.line_has_content = had;
            } else {
                self.line_has_content = false;
            }
            if more {
                return Ok(true);
            }
        }
    }

    /// Appends the bytes of one value to `buf`; false if the input ended
    /// inside it.
    fn take_value(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        let mut scan = Scan::default();
        loop {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                return Ok(scan.at_end_of_input());
            }
            let (n, done) = scan.feed(chunk);
            buf.extend_from_slice(&chunk[..n]);
            let newlines = chunk[..n].iter().filter(|b| **b == b'\n').count();
            let last_nl = chunk[..n].iter().rposition(|b| *b == b'\n');
            self.consume(newlines, last_nl, n);
            if done {
                return Ok(true);
            }
        }
    }

    /// Whether only whitespace follows on the current line (consumed up
    /// to, not including, its newline).
    fn rest_of_line_is_blank(&mut self) -> io::Result<bool> {
        loop {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                return Ok(true);
            }
            let n = chunk
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r'))
                .unwrap_or(chunk.len());
            let next = chunk.get(n).copied();
            let had = self.line_has_content;
            self.consume(0, None, n);
            self.line_has_content = had;
            match next {
                None => continue,
                Some(b'\n') => return Ok(true),
                Some(_) => return Ok(false),
            }
        }
    }

    /// Skips to the start of the next line.
    fn skip_line(&mut self) -> io::Result<()> {
        loop {
            let chunk = self.chunk()?;
            if chunk.is_empty() {
                return Ok(());
            }
            match chunk.iter().position(|b| *b == b'\n') {
                Some(at) => {
                    self.consume(1, Some(at), at + 1);
                    return Ok(());
                }
                None => {
                    let n = chunk.len();
                    self.consume(0, None, n);
                }
            }
        }
    }

    /// Hands `bytes` back to be read again, before anything not yet read.
    fn unread(&mut self, bytes: &[u8]) {
        let rest = self.pending.split_off(self.pending_pos);
        self.pending.clear();
        self.pending.extend_from_slice(bytes);
        self.pending.extend_from_slice(&rest);
        self.pending_pos = 0;
        self.line -= bytes.iter().filter(|b| **b == b'\n').count() as u64;
        self.bytes -= bytes.len() as u64;
        // What is handed back starts a line.
        self.line_has_content = false;
    }

    fn next_item(&mut self) -> io::Result<Option<Item>> {
        if !self.skip_whitespace()? {
            return Ok(None);
        }
        let first_line = self.line;
        let starts_line = !self.line_has_content;
        let mut buf = Vec::new();
        let complete = self.take_value(&mut buf)?;
        let last_line = self.line - u64::from(buf.last() == Some(&b'\n'));
        self.documents += 1;
        let number = self.documents;
        let one_line = first_line == last_line;
        let parsed = if complete {
            checked(&buf, first_line)
        } else {
            Err("not valid JSON: the input ends inside this document".to_string())
        };
        let unreadable = |line, last_line, error| {
            Ok(Some(Item::Unreadable(Failure {
                document: number,
                line,
                last_line,
                kind: "invalid_json",
                error,
            })))
        };
        if self.strict_lines
            || (self.ndjson_so_far && self.seen_one_line_document && parsed.is_err())
        {
            if !one_line {
                // Only the first line is this record; the lines after it
                // are read again, each on its own.
                if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let rest = buf[nl + 1..].to_vec();
                    self.unread(&rest);
                }
                self.strict_lines = true;
                let why = match parsed {
                    Err(e) => e,
                    Ok(_) => "a document runs over more than one line in NDJSON".to_string(),
                };
                return unreadable(first_line, first_line, why);
            }
            if self.strict_lines && (!starts_line || !self.rest_of_line_is_blank()?) {
                self.skip_line()?;
                return unreadable(
                    first_line,
                    first_line,
                    "not valid NDJSON: the line holds more than one JSON document".to_string(),
                );
            }
        }
        if let (Err(e), true, true) = (&parsed, one_line, self.ndjson_so_far) {
            // A broken line of NDJSON (or a first line): the whole line is
            // the one unreadable record, not each word of it.
            let e = e.clone();
            if !self.rest_of_line_is_blank()? {
                self.skip_line()?;
            }
            return unreadable(first_line, first_line, e);
        }
        match parsed {
            Ok(()) => {
                if one_line {
                    self.seen_one_line_document = true;
                } else {
                    self.ndjson_so_far = false;
                }
                Ok(Some(Item::Document(Document {
                    number,
                    first_line,
                    last_line,
                    bytes: buf,
                })))
            }
            Err(error) => {
                if !one_line {
                    self.ndjson_so_far = false;
                }
                unreadable(first_line, last_line, error)
            }
        }
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = io::Result<Item>;
    fn next(&mut self) -> Option<io::Result<Item>> {
        self.next_item().transpose()
    }
}

/// Is `doc` one valid JSON document, by the transforms' own validation?
/// If not, serde_json's message says why (it refuses exactly the same).
fn checked(doc: &[u8], first_line: u64) -> Result<(), String> {
    match transform::validate(doc, transform::SERDE_MAX_DEPTH) {
        Ok(()) => Ok(()),
        Err(_) => Err(match serde_json::from_slice::<Value>(doc) {
            Err(e) => json_error(&e, first_line),
            Ok(_) => "not valid JSON".to_string(),
        }),
    }
}

/// serde_json's message with the position in the whole input.
fn json_error(e: &serde_json::Error, first_line: u64) -> String {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg.as_str(),
    };
    format!(
        "not valid JSON: {msg} at line {}",
        first_line + e.line().saturating_sub(1) as u64
    )
}

/// Finds where one JSON value ends, without validating it: brackets are
/// counted outside strings, a string ends at its closing quote, a bare
/// value at whitespace or punctuation. serde_json then parses the bytes.
#[derive(Default)]
struct Scan {
    started: bool,
    container: bool,
    string: bool,
    depth: u64,
    in_string: bool,
    escape: bool,
}

impl Scan {
    /// Reads from `data`; returns (bytes of the value in it, value ended).
    fn feed(&mut self, data: &[u8]) -> (usize, bool) {
        for (i, &b) in data.iter().enumerate() {
            if !self.started {
                self.started = true;
                match b {
                    b'{' | b'[' => {
                        self.container = true;
                        self.depth = 1;
                    }
                    b'"' => {
                        self.string = true;
                        self.in_string = true;
                    }
                    // A stray closing bracket or separator: a value of its own
                    // (which will not parse), so reading moves past it.
                    b'}' | b']' | b',' | b':' => return (1, true),
                    _ => {}
                }
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.string {
                        return (i + 1, true);
                    }
                }
                continue;
            }
            if self.container {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return (i + 1, true);
                        }
                    }
                    _ => {}
                }
            } else if matches!(
                b,
                b' ' | b'\t' | b'\r' | b'\n' | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"'
            ) {
                return (i, true);
            }
        }
        (data.len(), false)
    }

    /// At the end of the input: only a bare value is complete there.
    fn at_end_of_input(&self) -> bool {
        self.started && !self.container && !self.string
    }
}

// ---------------------------------------------------------------------------
// Transforms
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Documents read, failed ones included.
    pub documents: u64,
    pub written: u64,
    pub failed: u64,
    /// `encrypt`: values sealed.
    pub sealed: u64,
    /// `decrypt`: envelopes opened; `rewrap`: envelopes found (all opened).
    pub opened: u64,
    /// `decrypt`: envelopes that could not be opened but whose document was
    /// written anyway (`on_decrypt_failure: null | keep`).
    pub not_opened: u64,
    /// `rewrap`: envelopes re-sealed under the active key.
    pub resealed: u64,
    /// `index`: blind indexes written.
    pub indexed: u64,
    pub bytes: u64,
    /// Without `keep_going`: the failure the run stopped at (documents
    /// before it were written, none after).
    pub stopped: Option<Failure>,
}

pub enum Mode<'a> {
    Encrypt(&'a Route),
    Decrypt(&'a Route),
    /// Re-encrypt under the active key; a route's rules name custom contexts.
    Rewrap(Option<&'a [FieldRule]>),
    /// Add or recompute a route's blind indexes, from plaintext or by
    /// opening envelopes.
    Index(&'a Route),
    /// Move envelopes (`fs1` under the ring, or `fs2`) onto the data key of
    /// the document's own subject, as a tenant- or subject-scoped route
    /// seals them: `rewrap` with each document's keys.
    RewrapToSubject(Option<&'a [FieldRule]>, &'a KeysFor<'a>),
    /// `encrypt` with each document's subject keys.
    EncryptForSubject(&'a Route, &'a KeysFor<'a>),
}

/// The data keys of one document's subject (newest first), or why there
/// are none (no subject at the path, erased, store unavailable). Never the
/// document's values in the error.
pub type KeysFor<'a> = dyn Fn(&[u8]) -> Result<crate::crypto::SubjectKeys, String> + 'a;

impl Mode<'_> {
    pub fn verb(&self) -> &'static str {
        match self {
            Mode::Encrypt(_) => "encrypt",
            Mode::Decrypt(_) => "decrypt",
            Mode::Rewrap(_) | Mode::RewrapToSubject(..) => "rewrap",
            Mode::Index(_) => "index",
            Mode::EncryptForSubject(..) => "encrypt",
        }
    }
}

/// How a run goes on when a document fails.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Record failures in `failures` and go on with the next document,
    /// instead of stopping at the first.
    pub keep_going: bool,
    /// One JSON line per failed document (document, lines, error).
    pub failures: Option<&'a mut dyn Write>,
    pub progress: Option<Progress>,
    /// `index` on a route whose indexes are keyed by a tenant's or
    /// subject's data key: where each record names its tenant (subject).
    pub index_keys: Option<IndexKeySource<'a>>,
}

/// Whose data key indexes one stored record: the tenant (and subject)
/// read from the record itself, resolved through the key store.
pub struct IndexKeySource<'a> {
    pub service: &'a crate::keystore::KeyService,
    /// Member names from the root (`$.tenant_id` → `["tenant_id"]`).
    pub tenant: Option<Vec<String>>,
    pub subject: Option<Vec<String>>,
}

/// `$.a.b` → `["a", "b"]`: the only paths `--tenant-path` takes.
pub fn member_path(p: &str) -> Option<Vec<String>> {
    let rest = p.strip_prefix("$.")?;
    let parts: Vec<String> = rest.split('.').map(str::to_owned).collect();
    parts
        .iter()
        .all(|m| {
            !m.is_empty()
                && m.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        })
        .then_some(parts)
}

/// Reads documents from `input`, transforms each, writes one per line.
/// Without `keep_going` it stops at the first failure (a half-transformed
/// backup is worse than none); with it, failed documents are left out of
/// the output and listed in `failures`. `Ok` carries the counts either way;
/// `stats.failed > 0` means the output is incomplete. `Err` is for what
/// stops a run before or outside the documents: no rules, or I/O.
pub fn transform_stream(
    mode: &Mode<'_>,
    ring: &Keyring,
    input: impl BufRead,
    mut output: impl Write,
    mut opts: RunOptions<'_>,
) -> Result<Stats, OfflineError> {
    let index_keys = opts.index_keys.take();
    let plan = match mode {
        Mode::Encrypt(r) => Plan::Encrypt(Box::new(
            r.seal
                .as_ref()
                .map(SealSpec::for_stored_data)
                .ok_or_else(|| OfflineError::NoRules(r.name.clone(), "encrypt"))?,
        )),
        Mode::Decrypt(r) => Plan::Decrypt(
            r.open
                .as_ref()
                .ok_or_else(|| OfflineError::NoRules(r.name.clone(), "decrypt"))?,
        ),
        Mode::Rewrap(rules) => Plan::Rewrap(*rules),
        Mode::RewrapToSubject(rules, keys_for) => Plan::RewrapToSubject(*rules, *keys_for),
        Mode::EncryptForSubject(r, keys_for) => Plan::EncryptForSubject(
            Box::new(
                r.seal
                    .as_ref()
                    .map(SealSpec::for_stored_data)
                    .ok_or_else(|| OfflineError::NoRules(r.name.clone(), "encrypt"))?,
            ),
            *keys_for,
            r.index_scope == crate::routes::KeyScope::Deployment,
        ),
        Mode::Index(r) => {
            let rules = r
                .seal
                .as_ref()
                .map(|s| s.indexes.rules())
                .filter(|i| !i.is_empty())
                .ok_or_else(|| OfflineError::NoRules(r.name.clone(), "index"))?;
            let scope = match r.index_scope {
                crate::routes::KeyScope::Deployment => None,
                crate::routes::KeyScope::Tenant => Some(crate::crypto::RefScope::Tenant),
                crate::routes::KeyScope::Subject => Some(crate::crypto::RefScope::Subject),
            };
            let scoped = match (scope, index_keys.as_ref()) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(OfflineError::Scope(
                        r.name.clone(),
                        "its indexes are keyed per tenant or subject: give --tenant-path (and --subject-path) and a key_store section",
                    ))
                }
                (Some(sc), Some(src)) => {
                    let missing = match sc {
                        crate::crypto::RefScope::Tenant => src.tenant.is_none(),
                        crate::crypto::RefScope::Subject => src.subject.is_none(),
                    };
                    if missing {
                        return Err(OfflineError::Scope(
                            r.name.clone(),
                            "a tenant index needs --tenant-path, a subject index --subject-path (and --tenant-path when subjects belong to tenants)",
                        ));
                    }
                    Some((sc, src))
                }
            };
            Plan::Index(rules, scoped)
        }
    };
    let mut stats = Stats::default();
    let mut reader = Reader::new(input);
    while let Some(item) = reader.next() {
        let item = item?;
        stats.documents += 1;
        let result = match item {
            Item::Unreadable(f) => Err(f),
            Item::Document(doc) => transform_one(&plan, ring, &doc, &mut stats),
        };
        match result {
            Ok(out) => {
                write_compact(&mut output, &out)?;
                output.write_all(b"\n")?;
                stats.written += 1;
            }
            Err(f) => {
                stats.failed += 1;
                if !opts.keep_going {
                    stats.bytes = reader.bytes_read();
                    stats.stopped = Some(f);
                    break;
                }
                if let Some(w) = opts.failures.as_deref_mut() {
                    serde_json::to_writer(&mut *w, &f).map_err(io::Error::from)?;
                    w.write_all(b"\n")?;
                }
            }
        }
        stats.bytes = reader.bytes_read();
        if let Some(p) = &mut opts.progress {
            p.update(stats.documents, stats.bytes);
        }
    }
    output.flush()?;
    if let Some(w) = opts.failures.as_deref_mut() {
        w.flush()?;
    }
    if let Some(p) = &mut opts.progress {
        p.finish();
    }
    Ok(stats)
}

/// A `Mode` made ready to run: the specs the engine takes.
enum Plan<'a, 'k> {
    Encrypt(Box<SealSpec>),
    Decrypt(&'a OpenSpec),
    Rewrap(Option<&'a [FieldRule]>),
    Index(
        &'a [crate::transform::index::IndexRule],
        Option<(crate::crypto::RefScope, &'k IndexKeySource<'k>)>,
    ),
    RewrapToSubject(Option<&'a [FieldRule]>, &'a KeysFor<'a>),
    /// The bool: the route's blind indexes are keyed by the deployment
    /// (`index_scope: deployment`), not by the record's data key.
    EncryptForSubject(Box<SealSpec>, &'a KeysFor<'a>, bool),
}

/// The data keys of the tenant (subject) a stored record names at the
/// source's paths; a tenant without a key gets one, as its first write
/// through the proxy would. The error never shows the record's values.
fn keys_of_record(
    doc: &[u8],
    scope: crate::crypto::RefScope,
    source: &IndexKeySource<'_>,
) -> Result<crate::crypto::SubjectKeys, &'static str> {
    let v: Value = serde_json::from_slice(doc).map_err(|_| "the document is not valid JSON")?;
    let at = |path: &Option<Vec<String>>| -> Result<Option<String>, &'static str> {
        let Some(path) = path else {
            return Ok(None);
        };
        let mut cur = &v;
        for m in path {
            cur = cur
                .get(m)
                .ok_or("the record has no value at the tenant or subject path")?;
        }
        match cur {
            Value::String(s) if !s.is_empty() => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            _ => Err("the tenant or subject path holds no string or number"),
        }
    };
    let tenant = at(&source.tenant)?;
    let subject = match scope {
        crate::crypto::RefScope::Tenant => String::new(),
        crate::crypto::RefScope::Subject => at(&source.subject)?.unwrap_or_default(),
    };
    let reference = source
        .service
        .reference(scope, tenant.as_deref(), &subject)
        .ok_or("reference")?;
    match source
        .service
        .resolve_blocking(&reference, true, false)
        .map_err(|_| "the key store could not give the record's key")?
    {
        crate::keystore::Resolved::Keys(k) => Ok(crate::crypto::SubjectKeys::clone(&k)),
        crate::keystore::Resolved::Erased => Err("the record's tenant or subject is erased"),
        crate::keystore::Resolved::Absent => Err("no data key"),
    }
}

/// The transformed bytes of one document.
fn transform_one(
    plan: &Plan<'_, '_>,
    ring: &Keyring,
    doc: &Document,
    stats: &mut Stats,
) -> Result<Vec<u8>, Failure> {
    let now = unix_now();
    let fail = |kind: &'static str, error: String| Failure {
        document: doc.number,
        line: doc.first_line,
        last_line: doc.last_line,
        kind,
        error,
    };
    let record_keys;
    let keys = match plan {
        Plan::Index(_, Some((scope, source))) => {
            record_keys = keys_of_record(&doc.bytes, *scope, source)
                .map_err(|e| fail("keys", e.to_owned()))?;
            let newest = record_keys
                .first()
                .ok_or_else(|| fail("keys", "no data key".into()))?;
            Keys {
                seal: newest.sealing_key(),
                ring,
                subjects: &record_keys,
                // Stored records may still hold ring envelopes.
                subject_only: false,
                index: crate::transform::index::IndexKeys::DataKey(newest),
            }
        }
        _ => Keys::from(ring),
    };
    let subject_keys = match plan {
        Plan::RewrapToSubject(_, keys_for) | Plan::EncryptForSubject(_, keys_for, _) => {
            Some(keys_for(&doc.bytes).map_err(|e| fail("subject", e))?)
        }
        _ => None,
    };
    let for_subject = match &subject_keys {
        Some(sk) => Some(Keys {
            seal: sk
                .first()
                .ok_or_else(|| fail("subject", "the subject has no key".into()))?
                .sealing_key(),
            ring,
            subjects: sk,
            subject_only: false,
            index: match plan {
                Plan::EncryptForSubject(_, _, true) => {
                    crate::transform::index::IndexKeys::Ring(ring)
                }
                _ => crate::transform::index::IndexKeys::DataKey(
                    sk.first()
                        .ok_or_else(|| fail("subject", "the subject has no key".into()))?,
                ),
            },
        }),
        None => None,
    };
    let result = match plan {
        Plan::RewrapToSubject(rules, _) => match for_subject {
            Some(k) => transform::rewrap(&doc.bytes, *rules, k, now),
            None => return Err(fail("subject", "no subject keys".into())),
        },
        Plan::EncryptForSubject(spec, ..) => match for_subject {
            Some(k) => transform::encrypt(&doc.bytes, spec, k, now),
            None => return Err(fail("subject", "no subject keys".into())),
        },
        // The proxy's engine and look-alike policy (a route's request
        // schema is about requests, not stored records).
        Plan::Encrypt(spec) => transform::encrypt(&doc.bytes, spec, keys, now),
        Plan::Decrypt(spec) => transform::decrypt(&doc.bytes, spec, ring, now),
        Plan::Rewrap(rules) => transform::rewrap(&doc.bytes, *rules, keys, now),
        Plan::Index(rules, _) => {
            transform::index::add_indexes_opening(&doc.bytes, rules, keys, now).map(|o| {
                let (bytes, n) = o.unwrap_or_else(|| (doc.bytes.to_vec(), 0));
                let report = transform::TransformReport {
                    encrypted: n,
                    ..transform::TransformReport::default()
                };
                (bytes, report)
            })
        }
    };
    let (out, report) = result.map_err(|e| Failure {
        document: doc.number,
        line: doc.first_line,
        last_line: doc.last_line,
        kind: "transform",
        error: match e {
            TransformError::Decrypt(f) => format!(
                "field {} (key {}) could not be decrypted: {}",
                f.location,
                f.key_id.as_deref().unwrap_or("?"),
                f.reason
            ),
            other => other.to_string(),
        },
    })?;
    match plan {
        Plan::Encrypt(_) => stats.sealed += report.encrypted as u64,
        Plan::Decrypt(_) => {
            stats.opened += report.decrypted as u64;
            stats.not_opened += report.failures.len() as u64;
        }
        Plan::Rewrap(_) | Plan::RewrapToSubject(..) => {
            stats.opened += report.decrypted as u64;
            stats.resealed += report.encrypted as u64;
        }
        Plan::Index(..) => stats.indexed += report.encrypted as u64,
        Plan::EncryptForSubject(..) => stats.sealed += report.encrypted as u64,
    }
    Ok(out)
}

/// The string or number at a `$.a.b` path of a JSON document: the subject
/// (or tenant) it belongs to. None when absent or of another type.
pub fn subject_at(doc: &[u8], path: &[String]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let mut at = &v;
    for name in path {
        at = at.as_object()?.get(name)?;
    }
    match at {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `$.a.b` (member names only) as its names; None otherwise.
pub fn parse_subject_path(p: &str) -> Option<Vec<String>> {
    let rest = p.strip_prefix("$.")?;
    let names: Vec<String> = rest.split('.').map(str::to_owned).collect();
    names
        .iter()
        .all(|n| !n.is_empty() && !n.contains(['[', ']', '*', '\'', '"']))
        .then_some(names)
}

/// Writes the JSON document `doc` without the whitespace between its
/// tokens: one line, every other byte as it is.
fn write_compact(out: &mut impl Write, doc: &[u8]) -> io::Result<()> {
    let (mut in_string, mut escape, mut from) = (false, false, 0);
    for (i, &b) in doc.iter().enumerate() {
        if in_string {
            match b {
                _ if escape => escape = false,
                b'\\' => escape = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.write_all(&doc[from..i])?;
            from = i + 1;
        }
    }
    out.write_all(&doc[from..])
}

/// The summary line of a run (stderr), documents and envelopes counted apart.
pub fn summary(mode: &Mode<'_>, ring: &Keyring, s: &Stats) -> String {
    let docs = format!(
        "{}: {} documents read, {} written, {} failed",
        mode.verb(),
        s.documents,
        s.written,
        s.failed
    );
    let fields = match mode {
        Mode::Encrypt(_) => format!("{} fields sealed under {}", s.sealed, ring.active_id()),
        Mode::Decrypt(_) => format!(
            "{} envelopes opened, {} could not be opened",
            s.opened, s.not_opened
        ),
        Mode::Rewrap(_) => format!(
            "{} envelopes: {} re-sealed under {}, {} already under it",
            s.opened,
            s.resealed,
            ring.active_id(),
            s.opened - s.resealed.min(s.opened)
        ),
        Mode::Index(_) => format!("{} blind indexes written", s.indexed),
        Mode::RewrapToSubject(..) => format!(
            "{} envelopes: {} re-sealed under their subject's key, {} already under it",
            s.opened,
            s.resealed,
            s.opened - s.resealed.min(s.opened)
        ),
        Mode::EncryptForSubject(..) => {
            format!("{} fields sealed under their subject's key", s.sealed)
        }
    };
    format!("{docs}; {fields}")
}

// ---------------------------------------------------------------------------
// Progress on a terminal
// ---------------------------------------------------------------------------

/// A one-line progress display, redrawn at most every 200 ms (and for the
/// first document). Only made for a terminal: see `Progress::on_stderr`.
pub struct Progress {
    verb: &'static str,
    total: Option<u64>,
    start: Instant,
    last: Option<Instant>,
    drawn: bool,
    out: Box<dyn Write + Send>,
}

impl Progress {
    /// Progress on stderr when it is a terminal, else None. `total`: the
    /// input's size when known (a regular file), for the percentage and ETA.
    pub fn on_stderr(verb: &'static str, total: Option<u64>) -> Option<Progress> {
        use std::io::IsTerminal;
        std::io::stderr()
            .is_terminal()
            .then(|| Progress::new(verb, total, Box::new(std::io::stderr())))
    }

    pub fn new(verb: &'static str, total: Option<u64>, out: Box<dyn Write + Send>) -> Progress {
        Progress {
            verb,
            total: total.filter(|t| *t > 0),
            start: Instant::now(),
            last: None,
            drawn: false,
            out,
        }
    }

    pub fn update(&mut self, documents: u64, bytes: u64) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let line = progress_line(self.verb, documents, bytes, self.total, now - self.start);
        // Progress is best effort: a broken terminal must not fail the run.
        let _ = write!(self.out, "\r{line}\x1b[K");
        let _ = self.out.flush();
        self.drawn = true;
    }

    /// Clears the line, for the summary to take its place.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[K");
            let _ = self.out.flush();
            self.drawn = false;
        }
    }
}

fn progress_line(
    verb: &str,
    documents: u64,
    bytes: u64,
    total: Option<u64>,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mb = bytes as f64 / 1e6;
    let mut line = format!(
        "{verb}: {documents} documents, {mb:.1} MB, {:.0} documents/s, {:.1} MB/s",
        documents as f64 / secs,
        mb / secs
    );
    if let Some(total) = total {
        let done = (bytes as f64 / total as f64).min(1.0);
        let rate = bytes as f64 / secs;
        let eta = if rate > 0.0 {
            (total.saturating_sub(bytes)) as f64 / rate
        } else {
            0.0
        };
        let eta = eta.round() as u64;
        line.push_str(&format!(
            ", {:.0}% of {:.1} MB, ETA {}:{:02}",
            done * 100.0,
            total as f64 / 1e6,
            eta / 60,
            eta % 60
        ));
    }
    line
}

// ---------------------------------------------------------------------------
// Key census
// ---------------------------------------------------------------------------

/// What `keys --scan` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// Envelopes (strings that start with `fs1:`) per key id they name.
    pub envelopes: BTreeMap<String, u64>,
    /// `fs1:<id>:...` found inside longer strings or in member names, per
    /// key id: data the key still protects that `rewrap` does not reach.
    pub embedded: BTreeMap<String, u64>,
    /// Strings that start with `fs1:` but name no valid key id.
    pub malformed: u64,
    pub documents: u64,
    pub lines: u64,
    /// Documents that could not be read: the counts are then lower bounds.
    pub unreadable: Vec<Failure>,
}

impl Census {
    /// Every count is established only if every document was read.
    pub fn complete(&self) -> bool {
        self.unreadable.is_empty()
    }
}

/// Counts envelopes per key id in every document of `input`, at any depth,
/// in every member; reads the same forms as the transforms.
pub fn key_census(input: impl BufRead, mut progress: Option<Progress>) -> io::Result<Census> {
    let mut census = Census::default();
    let mut reader = Reader::new(input);
    while let Some(item) = reader.next() {
        census.documents += 1;
        match item? {
            Item::Document(d) => count_envelopes(&d.bytes, &mut census),
            Item::Unreadable(f) => census.unreadable.push(f),
        }
        if let Some(p) = &mut progress {
            p.update(census.documents, reader.bytes_read());
        }
    }
    if let Some(p) = &mut progress {
        p.finish();
    }
    census.lines = reader.lines_read();
    Ok(census)
}

/// Every string of a document read (checked valid), through the engine's
/// walk: every copy of a repeated member is counted.
fn count_envelopes(doc: &[u8], census: &mut Census) {
    // `doc` was validated by the reader, so the walk does not fail.
    let _ = transform::scan_strings(doc, |s, kind| match kind {
        StringKind::Value => count_string(s, census),
        StringKind::MemberName => count_embedded(s, census),
    });
}

fn count_string(s: &str, census: &mut Census) {
    if looks_like_envelope(s) {
        match envelope_key_id(s) {
            Some(id) => *census.envelopes.entry(id.to_string()).or_insert(0) += 1,
            None => census.malformed += 1,
        }
        // An envelope's own text never holds the prefix again.
        return;
    }
    count_embedded(s, census);
}

/// Counts `fs1:<key id>:<at least 40 base64url characters>` inside `s`:
/// an envelope that is part of a longer string (a JSON document stored as
/// text, a log line) or of a member name.
fn count_embedded(s: &str, census: &mut Census) {
    let mut rest = s;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let id_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            .count();
        let (id, tail) = after.split_at(id_len);
        if is_valid_key_id(id) {
            if let Some(body) = tail.strip_prefix(':') {
                let b64 = body
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                    .count();
                if b64 >= 40 {
                    *census.embedded.entry(id.to_string()).or_insert(0) += 1;
                }
            }
        }
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(doc: &[u8]) -> String {
        let mut out = Vec::new();
        write_compact(&mut out, doc).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    /// (first line, last line, document) or the lines of an unreadable one.
    type Read = Result<(u64, u64, String), (u64, u64)>;

    fn items(input: &str) -> Vec<Read> {
        // Small chunks: the reader must not depend on where buffers end.
        let reader = io::BufReader::with_capacity(3, input.as_bytes());
        Reader::new(reader)
            .map(|i| match i.expect("io") {
                Item::Document(d) => Ok((d.first_line, d.last_line, compact(&d.bytes))),
                Item::Unreadable(f) => Err((f.line, f.last_line)),
            })
            .collect()
    }

    #[test]
    fn reads_ndjson_pretty_documents_arrays_and_concatenations() {
        assert_eq!(
            items("{\"a\":1}\n\n{\"b\":[1,{\"c\":\"}\"}]}\r\n"),
            vec![
                Ok((1, 1, r#"{"a":1}"#.into())),
                Ok((3, 3, r#"{"b":[1,{"c":"}"}]}"#.into()))
            ]
        );
        assert_eq!(
            items("{\n  \"a\": \"x\\\"}\",\n  \"b\": [\n    1\n  ]\n}\n"),
            vec![Ok((1, 6, r#"{"a":"x\"}","b":[1]}"#.into()))]
        );
        assert_eq!(
            items("[{\"a\":1},\n {\"a\":2}]"),
            vec![Ok((1, 2, r#"[{"a":1},{"a":2}]"#.into()))]
        );
        assert_eq!(
            items("{\"a\":1} {\"a\":2}\n3 \"s\" true"),
            vec![
                Ok((1, 1, r#"{"a":1}"#.into())),
                Ok((1, 1, r#"{"a":2}"#.into())),
                Ok((2, 2, "3".into())),
                Ok((2, 2, r#""s""#.into())),
                Ok((2, 2, "true".into())),
            ]
        );
        assert!(items("").is_empty());
        assert!(items(" \n\t\n").is_empty());
    }

    #[test]
    fn a_broken_ndjson_line_is_that_line_and_reading_goes_on() {
        let input = "{\"a\":1}\n{\"a\": 2 oops\n{\"a\":3}\n{\"a\":4}\n";
        assert_eq!(
            items(input),
            vec![
                Ok((1, 1, r#"{"a":1}"#.into())),
                Err((2, 2)),
                Ok((3, 3, r#"{"a":3}"#.into())),
                Ok((4, 4, r#"{"a":4}"#.into())),
            ]
        );
        // Balanced but invalid: the same.
        assert_eq!(
            items("{\"a\":1}\n{\"a\": oops}\n{\"a\":3}\n"),
            vec![
                Ok((1, 1, r#"{"a":1}"#.into())),
                Err((2, 2)),
                Ok((3, 3, r#"{"a":3}"#.into())),
            ]
        );
        // After a broken line each line is one record or unreadable: what
        // is left of a pretty document never joins up into a document.
        let input = "{\"a\":1}\n{\"b\": [\n  \"fs1:x\",\n  {\"c\": 1}\n]\n{\"a\":5}\n";
        assert_eq!(
            items(input),
            vec![
                Ok((1, 1, r#"{"a":1}"#.into())),
                Err((2, 2)),
                Err((3, 3)),
                Ok((4, 4, r#"{"c":1}"#.into())),
                Err((5, 5)),
                Ok((6, 6, r#"{"a":5}"#.into())),
            ]
        );
    }

    #[test]
    fn without_an_ndjson_line_first_a_broken_document_runs_to_its_end() {
        // A broken pretty document is one unreadable document.
        assert_eq!(
            items("{\n  \"a\": 1,\n  \"b\" 2\n}\n{\"c\":1}\n"),
            vec![Err((1, 4)), Ok((5, 5, r#"{"c":1}"#.into()))]
        );
        // Unterminated: the rest of the input, reported as such.
        let out: Vec<_> = Reader::new("{\"a\": [1,\n2\n".as_bytes())
            .map(|i| i.unwrap())
            .collect();
        match &out[..] {
            [Item::Unreadable(f)] => {
                assert_eq!((f.line, f.last_line), (1, 2));
                assert!(f.error.contains("ends inside"), "{}", f.error);
            }
            other => panic!("{other:?}"),
        }
        // A line that is not JSON is one unreadable record, whatever it holds.
        assert_eq!(
            items("] {\"a\":1}\nnot json\n{\"a\":2}\n"),
            vec![Err((1, 1)), Err((2, 2)), Ok((3, 3, r#"{"a":2}"#.into()))]
        );
    }

    #[test]
    fn parse_errors_name_the_input_line() {
        let out: Vec<_> = Reader::new("\n\n{\"a\":\n 1 2}\n".as_bytes())
            .map(|i| i.unwrap())
            .collect();
        match &out[..] {
            [Item::Unreadable(f)] => {
                assert_eq!((f.line, f.last_line), (3, 4));
                assert!(f.error.ends_with("at line 4"), "{}", f.error);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn census_counts_every_envelope_anywhere_and_embedded_ones_apart() {
        let env = |id: &str| format!("fs1:{id}:{}", "A".repeat(60));
        let doc = serde_json::json!({
            "a": env("k1"),
            "deep": [[{"x": env("k1")}], env("k2")],
            "note": format!("copied {} here", env("k1")),
            "bad": "fs1:not a key:xx",
            "short": "fs1:k1:abc",
            env("k3"): 1,
            "plain": "fs1",
        });
        let mut c = Census::default();
        count_envelopes(&serde_json::to_vec(&doc).expect("json"), &mut c);
        assert_eq!(c.envelopes.get("k1"), Some(&3), "{c:?}");
        assert_eq!(c.envelopes.get("k2"), Some(&1));
        assert_eq!(c.embedded.get("k1"), Some(&1));
        assert_eq!(c.embedded.get("k3"), Some(&1));
        assert_eq!(c.malformed, 1, "{c:?}");
    }

    #[test]
    fn progress_shows_count_rate_and_eta_when_the_size_is_known() {
        let l = progress_line(
            "rewrap",
            500,
            2_000_000,
            Some(8_000_000),
            Duration::from_secs(2),
        );
        assert!(l.contains("500 documents"), "{l}");
        assert!(l.contains("250 documents/s"), "{l}");
        assert!(l.contains("1.0 MB/s"), "{l}");
        assert!(l.contains("25% of 8.0 MB, ETA 0:06"), "{l}");
        let l = progress_line("rewrap", 5, 100, None, Duration::from_secs(1));
        assert!(!l.contains("ETA"), "{l}");
    }
}
