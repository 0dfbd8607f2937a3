//! Loading keys from passphrases and key files. PBKDF2 at the minimum
//! 100,000 iterations costs ~50 ms per key in release, more in debug builds.

use std::fs;
use std::path::Path;

use fieldseal::crypto::{
    write_key_file, KeyError, KeySource, KeySpec, Keyring, KeyringSpec, SaltSource,
    MIN_PBKDF2_ITERATIONS,
};
use serde_json::json;

const PASS: &str = "correct horse battery staple";
const SALT: &str = "fieldseal-salt-0001";
/// PBKDF2-HMAC-SHA256(PASS, SALT, 100000, 32), from docs/envelope.md.
const PBKDF2_MASTER: &str = "673e50f609f3fb43c920aa4e4cecf6548adef8f49f57ba3c0bbfd1e865b8c217";

fn unhex(s: &str) -> [u8; 32] {
    std::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
}

fn spec(keys: Vec<KeySpec>, active: &str) -> KeyringSpec {
    KeyringSpec {
        active: active.into(),
        keys,
        pbkdf2_iterations: MIN_PBKDF2_ITERATIONS,
    }
}

fn pass_key(id: &str, env: &str, salt: SaltSource) -> KeySpec {
    KeySpec {
        id: id.into(),
        source: KeySource::Passphrase {
            env: env.into(),
            salt,
        },
    }
}

fn file_key(id: &str, path: &Path) -> KeySpec {
    KeySpec {
        id: id.into(),
        source: KeySource::File(path.to_owned()),
    }
}

/// Env vars are process-wide; each test uses its own names.
fn set_env(name: &str, value: &str) {
    std::env::set_var(name, value);
}

/// Same envelope bytes under a fixed nonce = same AES key.
fn same_key(a: &Keyring, b: &Keyring, id: &str) -> bool {
    let v = json!("probe");
    let x = a.seal_with_nonce(id, &v, "c", 1, [9; 12]).expect("seal");
    let y = b.seal_with_nonce(id, &v, "c", 1, [9; 12]).expect("seal");
    x == y
}

#[test]
fn passphrase_with_salt_from_env_and_file_match_the_vector() {
    set_env("FS_T1_PASS", PASS);
    set_env("FS_T1_SALT", SALT);
    let dir = tempfile::tempdir().expect("tmp");
    let salt_file = dir.path().join("salt");
    fs::write(&salt_file, format!("{SALT}\n")).expect("write");

    let from_env = Keyring::load(&spec(
        vec![pass_key(
            "p1",
            "FS_T1_PASS",
            SaltSource::Env("FS_T1_SALT".into()),
        )],
        "p1",
    ))
    .expect("load env salt");
    let from_file = Keyring::load(&spec(
        vec![pass_key("p1", "FS_T1_PASS", SaltSource::File(salt_file))],
        "p1",
    ))
    .expect("load file salt");
    let raw = Keyring::from_raw_keys("p1", vec![("p1".into(), unhex(PBKDF2_MASTER))]).expect("raw");
    assert!(same_key(&from_env, &raw, "p1"));
    assert!(same_key(&from_file, &raw, "p1"));
}

#[test]
fn passphrase_problems_are_refused_and_named() {
    set_env("FS_T2_PASS", PASS);
    set_env("FS_T2_EMPTY", "");
    set_env("FS_T2_SHORT_SALT", "only-15-bytes!!");
    set_env("FS_T2_SALT", SALT);
    let salt = || SaltSource::Env("FS_T2_SALT".into());

    let mut few = spec(vec![pass_key("p1", "FS_T2_PASS", salt())], "p1");
    few.pbkdf2_iterations = MIN_PBKDF2_ITERATIONS - 1;
    let e = Keyring::load(&few).expect_err("few iterations");
    assert!(matches!(e, KeyError::TooFewIterations { .. }), "{e}");

    let e =
        Keyring::load(&spec(vec![pass_key("p1", "FS_T2_UNSET", salt())], "p1")).expect_err("unset");
    assert!(matches!(e, KeyError::EnvMissing { .. }));
    assert!(
        e.to_string().contains("FS_T2_UNSET") && e.to_string().contains("p1"),
        "{e}"
    );

    let e =
        Keyring::load(&spec(vec![pass_key("p1", "FS_T2_EMPTY", salt())], "p1")).expect_err("empty");
    assert!(matches!(e, KeyError::EnvEmpty { .. }));

    let e = Keyring::load(&spec(
        vec![pass_key(
            "p1",
            "FS_T2_PASS",
            SaltSource::Env("FS_T2_SHORT_SALT".into()),
        )],
        "p1",
    ))
    .expect_err("short salt");
    assert!(matches!(e, KeyError::SaltTooShort { len: 15, .. }), "{e}");
    assert!(e.to_string().contains("FS_T2_SHORT_SALT"));
    assert!(!e.to_string().contains("only-15"), "salt value leaked: {e}");

    let e = Keyring::load(&spec(
        vec![pass_key(
            "p1",
            "FS_T2_PASS",
            SaltSource::Env("FS_T2_EMPTY".into()),
        )],
        "p1",
    ))
    .expect_err("empty salt");
    assert!(matches!(e, KeyError::SaltTooShort { len: 0, .. }));

    let e = Keyring::load(&spec(
        vec![pass_key(
            "p1",
            "FS_T2_PASS",
            SaltSource::File("/nonexistent/salt".into()),
        )],
        "p1",
    ))
    .expect_err("missing salt file");
    assert!(e.to_string().contains("/nonexistent/salt"), "{e}");
    assert!(!e.to_string().contains(PASS));
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).expect("meta").permissions().mode() & 0o7777
}

#[cfg(unix)]
#[test]
fn key_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("k1.key");
    write_key_file(&path).expect("keygen");
    assert_eq!(mode_of(&path), 0o600);
    let text = fs::read_to_string(&path).expect("read");
    assert_eq!(text.len(), 45);
    assert!(text.ends_with('\n'));

    let e = write_key_file(&path).expect_err("overwrite");
    assert!(matches!(e, KeyError::Exists { .. }));
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        text,
        "file changed"
    );

    let ring = Keyring::load(&spec(vec![file_key("k1", &path)], "k1")).expect("0600");
    assert!(ring.self_test().iter().all(|(_, r)| r.is_ok()));

    chmod(&path, 0o400);
    let again = Keyring::load(&spec(vec![file_key("k1", &path)], "k1")).expect("0400");
    assert!(same_key(&ring, &again, "k1"));

    for loose in [0o644, 0o640, 0o604, 0o700, 0o660] {
        chmod(&path, loose);
        let e = Keyring::load(&spec(vec![file_key("k1", &path)], "k1")).expect_err("loose");
        let msg = e.to_string();
        assert!(matches!(e, KeyError::Permissions { .. }));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{loose:04o}")), "{msg}");
    }
}

#[cfg(unix)]
#[test]
fn bad_key_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        fs::write(&p, content).expect("write");
        chmod(&p, 0o600);
        p
    };
    // 16 bytes, not 32
    let short = write("short", "AAECAwQFBgcICQoLDA0ODw==\n");
    let not_b64 = write("junk", "this is not base64 at all!!\n");
    let big = write("big", &"A".repeat(5000));
    let ok = write("ok", "  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n ");

    for (p, problem) in [
        (&short, "32 bytes"),
        (&not_b64, "base64"),
        (&big, "too large"),
    ] {
        let e = Keyring::load(&spec(vec![file_key("k1", p)], "k1")).expect_err("bad");
        assert!(matches!(e, KeyError::KeyFile { .. }), "{e}");
        assert!(e.to_string().contains(problem), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }
    // whitespace is trimmed; the content is the bytes 0..32
    let ring = Keyring::load(&spec(vec![file_key("k1", &ok)], "k1")).expect("trimmed");
    let raw_master: [u8; 32] = std::array::from_fn(|i| i as u8);
    let raw = Keyring::from_raw_keys("k1", vec![("k1".into(), raw_master)]).expect("raw");
    assert!(same_key(&ring, &raw, "k1"));

    let e = Keyring::load(&spec(vec![file_key("k1", dir.path())], "k1")).expect_err("dir");
    assert!(e.to_string().contains("regular file"), "{e}");
    let e = Keyring::load(&spec(vec![file_key("k1", &dir.path().join("none"))], "k1"))
        .expect_err("missing");
    assert!(matches!(e, KeyError::Read { .. }));
}

#[cfg(unix)]
#[test]
fn spec_validation_and_mixed_ring() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.key");
    let b = dir.path().join("b.key");
    write_key_file(&a).expect("keygen");
    write_key_file(&b).expect("keygen");

    let e =
        Keyring::load(&spec(vec![file_key("k1", &a), file_key("k1", &b)], "k1")).expect_err("dup");
    assert!(matches!(e, KeyError::DuplicateId { .. }));
    let e = Keyring::load(&spec(vec![file_key("k1", &a)], "k2")).expect_err("active");
    assert!(matches!(e, KeyError::ActiveMissing { .. }));
    let e = Keyring::load(&spec(vec![file_key("bad:id", &a)], "bad:id")).expect_err("id");
    assert!(matches!(e, KeyError::InvalidId { .. }));
    let e = Keyring::load(&spec(vec![], "k1")).expect_err("empty");
    assert!(matches!(e, KeyError::NoKeys));

    // Iterations only matter for passphrase keys.
    let mut files_only = spec(vec![file_key("k1", &a), file_key("k2", &b)], "k2");
    files_only.pbkdf2_iterations = 1;
    let ring = Keyring::load(&files_only).expect("files only");
    assert_eq!(ring.active_id(), "k2");
    assert_eq!(ring.ids(), vec!["k1", "k2"]);
    let sub1 = ring.derive_subkey("k1", "audit").expect("sub");
    let sub2 = ring.derive_subkey("k2", "audit").expect("sub");
    assert_ne!(*sub1, *sub2);
}
