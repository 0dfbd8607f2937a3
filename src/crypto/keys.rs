//! Reading key material and deriving keys from it. Every secret buffer is
//! wrapped in `Zeroizing` so it is wiped when dropped.

use std::io::{Read, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{KeyError, KeySource, SaltSource, MIN_PBKDF2_ITERATIONS};

pub(crate) type Master = Zeroizing<[u8; 32]>;

/// Shortest salt accepted for a passphrase key (bytes).
pub const MIN_SALT_LEN: usize = 16;
/// HKDF info for the AES-256-GCM field key.
pub(crate) const FIELD_KEY_INFO: &[u8] = b"fieldseal v1 field encryption";
/// HKDF info prefix for `derive_subkey`; the NUL keeps it from ever equalling
/// `FIELD_KEY_INFO`, whatever the purpose string.
pub(crate) const SUBKEY_INFO_PREFIX: &[u8] = b"fieldseal v1 subkey\0";

/// A key file holds 44 base64 characters; anything much bigger is not one.
const MAX_KEY_FILE_LEN: u64 = 1024;
const MAX_SALT_FILE_LEN: u64 = 4096;

/// Reads or derives the 32-byte master secret of one key.
pub(crate) fn load_master(
    id: &str,
    source: &KeySource,
    iterations: u32,
) -> Result<Master, KeyError> {
    match source {
        KeySource::Passphrase { env, salt } => passphrase_master(id, env, salt, iterations),
        KeySource::File(path) => key_file_master(id, path),
        // Never called for them: `Keyring::load` skips token keys.
        KeySource::Pkcs11(_) => Err(KeyError::Derive { id: id.to_owned() }),
    }
}

fn passphrase_master(
    id: &str,
    var: &str,
    salt: &SaltSource,
    iterations: u32,
) -> Result<Master, KeyError> {
    if iterations < MIN_PBKDF2_ITERATIONS {
        return Err(KeyError::TooFewIterations {
            id: id.to_owned(),
            iterations,
            min: MIN_PBKDF2_ITERATIONS,
        });
    }
    let pass = read_passphrase(id, var)?;
    let salt = read_salt(id, salt)?;
    let mut master = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(&pass, &salt, iterations, master.as_mut());
    Ok(master)
}

fn read_passphrase(id: &str, var: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let pass = Zeroizing::new(
        std::env::var_os(var)
            .ok_or_else(|| KeyError::EnvMissing {
                id: id.to_owned(),
                var: var.to_owned(),
            })?
            .into_encoded_bytes(),
    );
    if pass.is_empty() {
        return Err(KeyError::EnvEmpty {
            id: id.to_owned(),
            var: var.to_owned(),
        });
    }
    Ok(pass)
}

/// Checks a key source the way `load_master` reads it, without the PBKDF2
/// stretch (for `fieldseal check`): the passphrase variable is set and not
/// empty, the salt long enough, a key file owner-only and 32 bytes.
pub fn check_source(id: &str, source: &KeySource) -> Result<(), KeyError> {
    match source {
        KeySource::File(path) => key_file_master(id, path).map(drop),
        KeySource::Passphrase { env, salt } => {
            read_passphrase(id, env)?;
            read_salt(id, salt).map(drop)
        }
        KeySource::Pkcs11(spec) => {
            if !spec.module.is_file() {
                return Err(KeyError::Token {
                    id: id.to_owned(),
                    message: format!("PKCS#11 module {} is not a file", spec.module.display()),
                });
            }
            let token = |message| KeyError::Token {
                id: id.to_owned(),
                message,
            };
            super::pkcs11::check_pin_source(id, &spec.pin).map_err(token)?;
            super::pkcs11::check_token(spec).map_err(token)
        }
    }
}

/// The salt is used as the bytes given, minus surrounding ASCII whitespace
/// (so a trailing newline in a file or variable does not change the key).
fn read_salt(id: &str, source: &SaltSource) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let (raw, origin) = match source {
        SaltSource::Env(var) => {
            let v = std::env::var_os(var).ok_or_else(|| KeyError::EnvMissing {
                id: id.to_owned(),
                var: var.clone(),
            })?;
            (
                Zeroizing::new(v.into_encoded_bytes()),
                format!("environment variable {var}"),
            )
        }
        SaltSource::File(path) => {
            let read_err = |error| KeyError::Read {
                id: id.to_owned(),
                path: path.clone(),
                error,
            };
            let file = crate::files::open_regular(path).map_err(read_err)?;
            let mut buf = Zeroizing::new(Vec::new());
            file.take(MAX_SALT_FILE_LEN)
                .read_to_end(&mut buf)
                .map_err(read_err)?;
            (buf, format!("file {}", path.display()))
        }
    };
    let salt = Zeroizing::new(raw.trim_ascii().to_vec());
    if salt.len() < MIN_SALT_LEN {
        return Err(KeyError::SaltTooShort {
            id: id.to_owned(),
            origin,
            len: salt.len(),
            min: MIN_SALT_LEN,
        });
    }
    Ok(salt)
}

fn key_file_master(id: &str, path: &Path) -> Result<Master, KeyError> {
    let read_err = |error| KeyError::Read {
        id: id.to_owned(),
        path: path.to_owned(),
        error,
    };
    let bad = |problem| KeyError::KeyFile {
        id: id.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let file = crate::files::open_regular(path).map_err(read_err)?;
    // Checked on the open handle, so a swap between check and read is moot.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    check_mode(id, path, &meta)?;
    let mut text = Zeroizing::new(Vec::with_capacity(64));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(bad(
            "is too large to be a key file (expected 44 base64 characters)",
        ));
    }
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim_ascii())
            .map_err(|_| bad("is not valid base64"))?,
    );
    if bytes.len() != 32 {
        return Err(bad("does not decode to 32 bytes"));
    }
    let mut master = Zeroizing::new([0u8; 32]);
    master.copy_from_slice(&bytes);
    Ok(master)
}

/// Owner read/write at most: any group, other, execute or special bit is refused.
fn check_mode(id: &str, path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    match looser_than_0600(meta) {
        Some(mode) => Err(KeyError::Permissions {
            id: id.to_owned(),
            path: path.to_owned(),
            mode,
        }),
        None => Ok(()),
    }
}

/// The file's mode when it allows more than owner read/write (any group,
/// other, execute or special bit); None when it is 0600 or stricter. For
/// every file that holds a secret: key files, the admin token.
#[cfg(unix)]
pub(crate) fn looser_than_0600(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    (mode & !0o600 != 0).then_some(mode)
}

#[cfg(not(unix))]
pub(crate) fn looser_than_0600(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

/// HKDF-SHA256 (no salt) of `master` with the given info parts concatenated.
pub(crate) fn hkdf(master: &[u8; 32], info: &[&[u8]]) -> Option<Zeroizing<[u8; 32]>> {
    let hk = Hkdf::<Sha256>::new(None, master);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(info, out.as_mut()).ok()?;
    Some(out)
}

/// `fieldseal keygen`: 32 bytes from the OS CSPRNG, base64, mode 0600, never overwrites.
pub fn write_key_file(path: &Path) -> Result<(), KeyError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(key.as_mut()).map_err(|_| KeyError::Rng)?;
    let mut text = Zeroizing::new(STANDARD.encode(key.as_ref()));
    text.push('\n');

    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyError::Write {
                path: path.to_owned(),
                error: source,
            }
        }
    })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written key file must not be mistaken for a key later.
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(KeyError::Write {
            path: path.to_owned(),
            error: source,
        });
    }
    Ok(())
}
