//! `keys`: where each ring key comes from (never the key itself), checked
//! with the keyring's own key-id rules.

use std::path::Path;

use super::locate::At;
use super::raw::RawKeys;
use super::{invalid, invalid_shown, resolve, Invalid};
use crate::crypto::pkcs11::{PinSource, Pkcs11Spec};
use crate::crypto::{
    check_key_ids, KeyIdProblem, KeySource, KeySpec, KeyringSpec, SaltSource,
    DEFAULT_PBKDF2_ITERATIONS, MIN_PBKDF2_ITERATIONS,
};

pub(super) fn compile(k: &RawKeys, base: &Path) -> Result<KeyringSpec, Invalid> {
    let at = At::top("keys");
    let ring = at.key("ring");
    let iterations = k.pbkdf2_iterations.unwrap_or(DEFAULT_PBKDF2_ITERATIONS);
    if iterations < MIN_PBKDF2_ITERATIONS {
        return Err(invalid(
            &at.key("pbkdf2_iterations"),
            format!("{iterations} is below the minimum of {MIN_PBKDF2_ITERATIONS} (OWASP advises 600000 for PBKDF2-HMAC-SHA256)"),
        ));
    }
    let entry = |i: usize| ring.item(i, &k.ring[i].id);
    check_key_ids(&k.active, k.ring.iter().map(|key| key.id.as_str())).map_err(|p| match p {
        KeyIdProblem::Invalid(i) => invalid_shown(
            entry(i).shown(),
            "key ids are 1-64 characters of A-Z a-z 0-9 - _",
            Some(&entry(i).key("id")),
        ),
        KeyIdProblem::Duplicate(i) => invalid_shown(
            entry(i).shown(),
            "duplicate key id",
            Some(&entry(i).key("id")),
        ),
        KeyIdProblem::NoKeys => invalid(&ring, "needs at least one key"),
        KeyIdProblem::ActiveMissing => invalid(
            &at.key("active"),
            format!("{:?} is not in keys.ring", k.active),
        ),
    })?;
    let mut keys = Vec::with_capacity(k.ring.len());
    for (i, key) in k.ring.iter().enumerate() {
        let (at, shown) = (entry(i).key("id"), entry(i).shown().to_string());
        let refuse = |m: &str| invalid_shown(shown.clone(), m, Some(&at));
        if let Some(p) = &key.pkcs11 {
            if key.passphrase_env.is_some()
                || key.file.is_some()
                || key.salt_env.is_some()
                || key.salt_file.is_some()
            {
                return Err(refuse(
                    "a pkcs11 key takes no passphrase_env, file, salt_env or salt_file",
                ));
            }
            let pk = entry(i).key("pkcs11");
            let pin =
                match (&p.pin_env, &p.pin_file) {
                    (Some(e), None) if !e.is_empty() => PinSource::Env(e.clone()),
                    (None, Some(f)) if !f.is_empty() => PinSource::File(resolve(base, f)),
                    _ => return Err(invalid(
                        &pk,
                        "set exactly one of pin_env or pin_file (the PIN never goes in the YAML)",
                    )),
                };
            for (name, v) in [
                ("module", &p.module),
                ("token", &p.token),
                ("label", &p.label),
            ] {
                if v.is_empty() {
                    return Err(invalid(&pk.key(name), "must not be empty"));
                }
            }
            keys.push(KeySpec {
                id: key.id.clone(),
                source: KeySource::Pkcs11(Pkcs11Spec {
                    module: resolve(base, &p.module),
                    token: p.token.clone(),
                    label: p.label.clone(),
                    pin,
                }),
            });
            continue;
        }
        let source = match (&key.passphrase_env, &key.file) {
            (Some(env), None) => {
                let salt = match (&key.salt_env, &key.salt_file) {
                    (Some(e), None) => SaltSource::Env(e.clone()),
                    (None, Some(f)) => SaltSource::File(resolve(base, f)),
                    _ => {
                        return Err(refuse(
                            "a passphrase key needs exactly one of salt_env or salt_file",
                        ))
                    }
                };
                KeySource::Passphrase {
                    env: env.clone(),
                    salt,
                }
            }
            (None, Some(f)) => {
                if key.salt_env.is_some() || key.salt_file.is_some() {
                    return Err(refuse("salt_env/salt_file only go with passphrase_env"));
                }
                KeySource::File(resolve(base, f))
            }
            _ => return Err(refuse(
                "set exactly one of passphrase_env, file or pkcs11 (key material never goes in the YAML)",
            )),
        };
        keys.push(KeySpec {
            id: key.id.clone(),
            source,
        });
    }
    Ok(KeyringSpec {
        active: k.active.clone(),
        keys,
        pbkdf2_iterations: iterations,
    })
}
