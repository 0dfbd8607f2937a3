//! A ring key that lives in a PKCS#11 token (an HSM; SoftHSM2 in the
//! tests) as a key-encryption key. fieldseal never sees its bytes: the
//! token encrypts and decrypts 32-byte data keys with it, nothing else.
//!
//! Mechanism: `CKM_AES_GCM` through `C_Encrypt`/`C_Decrypt`, a 96-bit IV
//! from the OS CSPRNG per wrap, a 128-bit tag, and associated data
//! `"fieldseal-pkcs11-wrap-v1" 0x00 || aad` (the key store passes the
//! reference and version, as for file keys), so a wrapped key moved to
//! another row does not unwrap. `CKM_AES_KEY_WRAP_KWP` has no associated
//! data and would leave that binding to us; GCM is in SoftHSM2 and every
//! HSM that speaks PKCS#11 2.40. Wrapped form: `0x01 || iv (12) ||
//! ciphertext (32) || tag (16)`, 61 bytes (`docs/envelope.md`).
//!
//! Sessions: one `Pkcs11` context per module per process (`C_Initialize`
//! once, OS locking), a pool of idle sessions per key. A call takes a
//! session out of the pool (or opens one), uses it on the calling thread
//! alone (a `Session` is `Send`, not `Sync`), and puts it back: parallel
//! unwraps use parallel sessions, none is shared. The user logs in once;
//! in PKCS#11 a login holds for every session of the process on that
//! token. A failure that is not "this wrapped key does not authenticate"
//! drops the connection (every pooled session, the key handle); the next
//! call reconnects (slot by token label, session, login, key by label),
//! at most once per `RECONNECT_EVERY`, failing fast in between, so a dead
//! HSM costs a request one quick error, not a hang per request.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::datakey::{DataKey, KeyEncryptionKey, WrapError};
use super::envelope::{NONCE_LEN, TAG_LEN};

/// Where a PKCS#11 ring key is: the module, the token (by label), the key
/// (by `CKA_LABEL`) and where the user PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Spec {
    pub module: PathBuf,
    pub token: String,
    pub label: String,
    pub pin: PinSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    Env(String),
    /// Owner-only (0600 or stricter), one line.
    File(PathBuf),
}

/// The provider kind, in logs, `keys` and `subjects show`.
pub const KIND: &str = "pkcs11";
/// Format byte of a PKCS#11-wrapped data key.
const FORMAT_V1: u8 = 1;
/// format (1) + iv (12) + key (32) + tag (16).
pub const PKCS11_WRAPPED_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;
const AAD_DOMAIN: &[u8] = b"fieldseal-pkcs11-wrap-v1\0";
/// After a failed connect, calls fail at once for this long.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// Idle sessions kept per key (more are closed when returned).
const MAX_IDLE_SESSIONS: usize = 16;
const MAX_PIN_FILE_LEN: u64 = 1024;

/// One context per module path, for the process: `C_Initialize` may run
/// only once per module, and every key in that module shares it.
fn module(path: &Path) -> Result<Pkcs11, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut m = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "the PKCS#11 module table is poisoned".to_owned())?;
    if let Some(ctx) = m.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path)
        .map_err(|e| format!("cannot load PKCS#11 module {}: {e}", path.display()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("C_Initialize of {}: {}", path.display(), short(&e))),
    }
    m.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// Finalizes and initializes `path`'s module again: many modules (SoftHSM2
/// among them) read their token list once, at `C_Initialize`, so a token
/// that was removed and came back, or was created since, is seen only
/// after this. Every session of every key on that module is closed by it:
/// their next call fails and reconnects (one 503 at most per request that
/// was mid-call). Called only when a token is not found, at most once per
/// `RECONNECT_EVERY` per key.
fn reinitialize(path: &Path) -> Result<Pkcs11, String> {
    let ctx = module(path)?;
    let _ = ctx.clone().finalize();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(format!("C_Initialize of {}: {}", path.display(), short(&e))),
    }
}

/// The token's slot; when it is not listed, once more after the module
/// was initialized again (see `reinitialize`).
fn find_token_rescan(path: &Path, label: &str) -> Result<(Pkcs11, Slot), String> {
    let ctx = module(path)?;
    match find_token(&ctx, label) {
        Ok(slot) => Ok((ctx, slot)),
        Err(_) => {
            let ctx = reinitialize(path)?;
            let slot = find_token(&ctx, label)?;
            Ok((ctx, slot))
        }
    }
}

/// A PKCS#11 error without the spec's paragraph: `C_Login: PinIncorrect`.
fn short(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{f}: {rv:?}"),
        other => other.to_string(),
    }
}

/// The user PIN, read at each connect (so a rotated `pin_file` is picked
/// up). Never logged, never in an error.
fn read_pin(id: &str, src: &PinSource) -> Result<AuthPin, String> {
    let pin: Zeroizing<String> = match src {
        PinSource::Env(var) => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| format!("key {id:?}: environment variable {var} is not set"))?,
        ),
        PinSource::File(path) => {
            let err =
                |e: std::io::Error| format!("key {id:?}: cannot read {}: {e}", path.display());
            let file = crate::files::open_regular(path).map_err(err)?;
            let meta = file.metadata().map_err(err)?;
            if let Some(mode) = super::keys::looser_than_0600(&meta) {
                return Err(format!(
                    "key {id:?}: PIN file {} has mode {mode:04o}; it must be 0600 or stricter",
                    path.display()
                ));
            }
            let mut buf = Zeroizing::new(Vec::new());
            file.take(MAX_PIN_FILE_LEN)
                .read_to_end(&mut buf)
                .map_err(err)?;
            let text = std::str::from_utf8(buf.trim_ascii())
                .map_err(|_| format!("key {id:?}: PIN file {} is not UTF-8", path.display()))?;
            Zeroizing::new(text.to_owned())
        }
    };
    if pin.trim().is_empty() {
        return Err(format!("key {id:?}: the PIN is empty"));
    }
    Ok(AuthPin::new(pin.trim().into()))
}

/// Checks the PIN source the way a connect reads it (`fieldseal check`).
pub fn check_pin_source(id: &str, src: &PinSource) -> Result<(), String> {
    read_pin(id, src).map(drop)
}

struct Conn {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    idle: Vec<Session>,
    /// Tells a session taken before a reconnect from one of the new link.
    generation: u64,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    generation: u64,
    /// When the last connect failed, and why (what callers get meanwhile).
    failed: Option<(Instant, String)>,
}

/// What `fieldseal keys` shows of a token key: attributes the token
/// reports, and its check value (`CKA_CHECK_VALUE`: the first 3 bytes of
/// the key's encryption of a zero block, computed by the token) when it
/// gives one. Never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeyInfo {
    pub token_serial: String,
    pub key_type: String,
    pub bits: u64,
    pub sensitive: bool,
    pub extractable: bool,
    pub check_value: Option<String>,
}

/// A ring key in a PKCS#11 token, as a `KeyEncryptionKey`.
pub struct Pkcs11Kek {
    id: String,
    spec: Pkcs11Spec,
    state: Mutex<State>,
}

impl std::fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("id", &self.id)
            .field("token", &self.spec.token)
            .field("label", &self.spec.label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Kek {
    /// Does not touch the token: the first call connects.
    pub fn new(id: &str, spec: Pkcs11Spec) -> Pkcs11Kek {
        Pkcs11Kek {
            id: id.to_owned(),
            spec,
            state: Mutex::new(State::default()),
        }
    }

    pub fn spec(&self) -> &Pkcs11Spec {
        &self.spec
    }

    fn provider(&self, message: String) -> WrapError {
        WrapError::Provider {
            kind: KIND,
            message,
        }
    }

    /// Connects now (and says why not): module, token, login, key.
    pub fn connect(&self) -> Result<(), WrapError> {
        let (session, generation, _key) = self.take()?;
        self.give_back(session, generation);
        Ok(())
    }

    fn open_conn(&self) -> Result<Conn, String> {
        let s = &self.spec;
        let (ctx, slot) = find_token_rescan(&s.module, &s.token)?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| format!("token {:?}: {}", s.token, short(&e)))?;
        let pin = read_pin(&self.id, &s.pin)?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(format!("token {:?}: {}", s.token, short(&e))),
        }
        let key = find_key(&session, &s.label).map_err(|e| format!("token {:?}: {e}", s.token))?;
        check_key(&session, key)
            .map_err(|e| format!("token {:?} key {:?}: {e}", s.token, s.label))?;
        Ok(Conn {
            ctx,
            slot,
            key,
            idle: vec![session],
            generation: 0,
        })
    }

    /// A session of the live connection (connecting first if needed).
    fn take(&self) -> Result<(Session, u64, ObjectHandle), WrapError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| self.provider("state poisoned".into()))?;
        if st.conn.is_none() {
            if let Some((at, why)) = &st.failed {
                if at.elapsed() < RECONNECT_EVERY {
                    return Err(self.provider(why.clone()));
                }
            }
            match self.open_conn() {
                Ok(mut c) => {
                    st.generation += 1;
                    c.generation = st.generation;
                    if st.failed.take().is_some() {
                        tracing::info!(key_id = %self.id, token = %self.spec.token, "PKCS#11 token is back");
                    }
                    st.conn = Some(c);
                }
                Err(why) => {
                    tracing::error!(key_id = %self.id, token = %self.spec.token, error = %why, "PKCS#11 token unavailable");
                    st.failed = Some((Instant::now(), why.clone()));
                    return Err(self.provider(why));
                }
            }
        }
        let Some(c) = st.conn.as_mut() else {
            return Err(self.provider("no connection".into()));
        };
        let (generation, key) = (c.generation, c.key);
        let session = match c.idle.pop() {
            Some(s) => s,
            None => match c.ctx.open_ro_session(c.slot) {
                Ok(s) => s,
                Err(e) => {
                    let why = format!("token {:?}: {}", self.spec.token, short(&e));
                    drop_conn(&mut st, why.clone());
                    return Err(self.provider(why));
                }
            },
        };
        Ok((session, generation, key))
    }

    fn give_back(&self, session: Session, generation: u64) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(c) = st.conn.as_mut() {
                if c.generation == generation && c.idle.len() < MAX_IDLE_SESSIONS {
                    c.idle.push(session);
                }
            }
        }
    }

    fn failed_call(&self, generation: u64, e: &CkError) -> Attempt {
        let w = self.fail(generation, e);
        if is_stale(e) {
            Attempt::Stale(w)
        } else {
            Attempt::Failed(w)
        }
    }

    /// After a failed call: the link is suspect, drop it (the next call
    /// reconnects).
    fn fail(&self, generation: u64, e: &CkError) -> WrapError {
        let why = format!("token {:?}: {}", self.spec.token, short(e));
        if let Ok(mut st) = self.state.lock() {
            if st.conn.as_ref().is_some_and(|c| c.generation == generation) {
                tracing::error!(key_id = %self.id, token = %self.spec.token, error = %why, "PKCS#11 call failed; reconnecting on next use");
                drop_conn(&mut st, why.clone());
                // A failed call is not a failed connect: the next call may
                // reconnect at once.
                st.failed = None;
            }
        }
        self.provider(why)
    }

    /// What `fieldseal keys` shows (connects if needed).
    pub fn describe(&self) -> Result<TokenKeyInfo, WrapError> {
        let (session, generation, key) = self.take()?;
        let serial = {
            let st = self.state.lock().ok();
            st.and_then(|st| {
                st.conn
                    .as_ref()
                    .and_then(|c| c.ctx.get_token_info(c.slot).ok())
                    .map(|t| t.serial_number().trim().to_owned())
            })
            .unwrap_or_default()
        };
        let attrs = session.get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::CheckValue,
            ],
        );
        let attrs = match attrs {
            Ok(a) => a,
            Err(e) => return Err(self.fail(generation, &e)),
        };
        self.give_back(session, generation);
        let mut info = TokenKeyInfo {
            token_serial: serial,
            key_type: String::new(),
            bits: 0,
            sensitive: false,
            extractable: true,
            check_value: None,
        };
        for a in attrs {
            match a {
                Attribute::KeyType(t) => info.key_type = format!("{t}"),
                Attribute::ValueLen(n) => info.bits = u64::from(n) * 8,
                Attribute::Sensitive(b) => info.sensitive = b,
                Attribute::Extractable(b) => info.extractable = b,
                Attribute::CheckValue(v) if !v.is_empty() => {
                    info.check_value = Some(v.iter().map(|b| format!("{b:02x}")).collect())
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// Deterministic wrapping for known-answer vectors ONLY.
    #[doc(hidden)]
    pub fn wrap_with_iv(
        &self,
        dek: &DataKey,
        aad: &[u8],
        iv: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, WrapError> {
        match self.wrap_once(dek, aad, iv) {
            Err(Attempt::Stale(_)) => self.wrap_once(dek, aad, iv).map_err(Attempt::into_wrap),
            other => other.map_err(Attempt::into_wrap),
        }
    }

    fn wrap_once(
        &self,
        dek: &DataKey,
        aad: &[u8],
        iv: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, Attempt> {
        let full = full_aad(aad);
        let mut iv_buf = iv;
        let (session, generation, key) = self.take().map_err(Attempt::Failed)?;
        let res = GcmParams::new(&mut iv_buf, &full, (TAG_LEN as u64 * 8).into())
            .and_then(|p| session.encrypt(&Mechanism::AesGcm(p), key, dek.expose()));
        let ct = match res {
            Ok(ct) => {
                self.give_back(session, generation);
                ct
            }
            Err(e) => {
                drop(session);
                return Err(self.failed_call(generation, &e));
            }
        };
        if ct.len() != 32 + TAG_LEN {
            return Err(Attempt::Failed(self.provider(format!(
                "token {:?}: AES-GCM returned {} bytes, expected {}",
                self.spec.token,
                ct.len(),
                32 + TAG_LEN
            ))));
        }
        let mut out = Vec::with_capacity(PKCS11_WRAPPED_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }
}

fn drop_conn(st: &mut State, why: String) {
    // Closing sessions of a vanished token fails; cryptoki logs and moves on.
    st.conn = None;
    st.failed = Some((Instant::now(), why));
}

fn full_aad(aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(AAD_DOMAIN.len() + aad.len());
    full.extend_from_slice(AAD_DOMAIN);
    full.extend_from_slice(aad);
    full
}

fn find_token(ctx: &Pkcs11, label: &str) -> Result<Slot, String> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| format!("listing slots: {}", short(&e)))?;
    for slot in slots {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim_end() == label {
                return Ok(slot);
            }
        }
    }
    Err(format!("no token labelled {label:?} is present"))
}

fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn find_key(session: &Session, label: &str) -> Result<ObjectHandle, String> {
    let found = session
        .find_objects(&key_template(label))
        .map_err(|e| short(&e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no AES key labelled {label:?} (create it with `fieldseal keys generate`)"
        )),
        _ => Err(format!(
            "{} AES keys are labelled {label:?}; labels must be unique",
            found.len()
        )),
    }
}

/// A KEK must be a 256-bit AES key the token keeps to itself.
fn check_key(session: &Session, key: ObjectHandle) -> Result<(), String> {
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
            ],
        )
        .map_err(|e| short(&e))?;
    for a in attrs {
        match a {
            Attribute::ValueLen(n) if u64::from(n) != 32 => {
                return Err(format!(
                    "is {} bits; a 256-bit AES key is required",
                    u64::from(n) * 8
                ))
            }
            Attribute::Sensitive(false) => {
                return Err("is not CKA_SENSITIVE; refusing a key whose value can be read".into())
            }
            Attribute::Extractable(true) => {
                return Err("is CKA_EXTRACTABLE; refusing a key that can leave the token".into())
            }
            Attribute::Encrypt(false) | Attribute::Decrypt(false) => {
                return Err("lacks CKA_ENCRYPT/CKA_DECRYPT".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// `fieldseal keys generate`: creates the key in the token (AES-256,
/// `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not extractable, encrypt and
/// decrypt only) unless a key with that label exists (then refuses).
pub fn generate(id: &str, spec: &Pkcs11Spec) -> Result<(), String> {
    let (ctx, slot) = find_token_rescan(&spec.module, &spec.token)?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| format!("token {:?}: {}", spec.token, short(&e)))?;
    let pin = read_pin(id, &spec.pin)?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(format!("token {:?}: {}", spec.token, short(&e))),
    }
    let existing = session
        .find_objects(&[Attribute::Label(spec.label.as_bytes().to_vec())])
        .map_err(|e| short(&e))?;
    if !existing.is_empty() {
        return Err(format!(
            "token {:?} already holds an object labelled {:?}; refusing to overwrite it",
            spec.token, spec.label
        ));
    }
    let mut template = key_template(&spec.label);
    template.extend([
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Id(id.as_bytes().to_vec()),
    ]);
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| format!("token {:?}: generating the key: {}", spec.token, short(&e)))?;
    Ok(())
}

/// Loads the module and finds the token, without logging in (`check`).
pub fn check_token(spec: &Pkcs11Spec) -> Result<(), String> {
    find_token_rescan(&spec.module, &spec.token).map(drop)
}

impl KeyEncryptionKey for Pkcs11Kek {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, WrapError> {
        let mut iv = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut iv).map_err(|_| WrapError::Rng)?;
        self.wrap_with_iv(dek, aad, iv)
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, WrapError> {
        if wrapped.len() != PKCS11_WRAPPED_LEN || wrapped[0] != FORMAT_V1 {
            return Err(WrapError::Malformed);
        }
        match self.unwrap_once(wrapped, aad) {
            Err(Attempt::Stale(_)) => self.unwrap_once(wrapped, aad).map_err(Attempt::into_wrap),
            other => other.map_err(Attempt::into_wrap),
        }
    }
}

impl Pkcs11Kek {
    fn unwrap_once(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, Attempt> {
        let full = full_aad(aad);
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
        let (session, generation, key) = self.take().map_err(Attempt::Failed)?;
        let res = GcmParams::new(&mut iv, &full, (TAG_LEN as u64 * 8).into())
            .and_then(|p| session.decrypt(&Mechanism::AesGcm(p), key, &wrapped[1 + NONCE_LEN..]));
        match res {
            Ok(plain) => {
                let plain = Zeroizing::new(plain);
                self.give_back(session, generation);
                let bytes: [u8; 32] = plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| Attempt::Failed(WrapError::Unwrap))?;
                Ok(DataKey::from_bytes(bytes))
            }
            Err(e) => {
                // A tag that does not verify is the token's answer, not its
                // failure: tell it from a dead link by asking the session.
                let alive = session.get_session_info().is_ok();
                if alive && is_auth_failure(&e) {
                    self.give_back(session, generation);
                    Err(Attempt::Failed(WrapError::Unwrap))
                } else {
                    drop(session);
                    Err(self.failed_call(generation, &e))
                }
            }
        }
    }
}

/// One try of a token call: `Stale` when the link was found dead (a
/// session or handle of a module that was reinitialized, a token that
/// came back), worth one retry on a fresh connection.
enum Attempt {
    Stale(WrapError),
    Failed(WrapError),
}

impl Attempt {
    fn into_wrap(self) -> WrapError {
        match self {
            Attempt::Stale(e) | Attempt::Failed(e) => e,
        }
    }
}

fn is_stale(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::TokenNotPresent
                | RvError::DeviceRemoved,
            _
        )
    )
}

/// What tokens answer for a GCM tag that does not verify (SoftHSM2 says
/// `CKR_GENERAL_ERROR` for it, others `CKR_ENCRYPTED_DATA_INVALID`).
fn is_auth_failure(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed,
            _
        )
    )
}
