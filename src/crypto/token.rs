//! The admin listener's bearer token (`admin.token_file`): read once per
//! load like a key file, kept only as a digest, compared in constant time.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted: a guessable token would make the check moot.
pub const MIN_TOKEN_LEN: usize = 16;
const MAX_TOKEN_FILE_LEN: u64 = 4096;

/// The admin bearer token, kept only as its SHA-256 digest: a presented
/// token is hashed and the digests compared in constant time, so neither
/// the token's bytes nor its length show in the timing.
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Reads `admin.token_file`: a regular file, mode 0600 or stricter (like
    /// key files), holding one token of at least [`MIN_TOKEN_LEN`] visible
    /// ASCII characters; surrounding whitespace is ignored. Errors name the
    /// file, never its content.
    pub fn load(path: &Path) -> Result<AdminToken, String> {
        let at = path.display();
        let file =
            crate::files::open_regular(path).map_err(|e| format!("cannot read {at}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read {at}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{at} is not a regular file"));
        }
        if let Some(mode) = super::looser_than_0600(&meta) {
            return Err(format!(
                "{at} has mode {mode:04o}; it must be 0600 or stricter (chmod 600 {at})"
            ));
        }
        let mut raw = zeroize::Zeroizing::new(Vec::new());
        file.take(MAX_TOKEN_FILE_LEN + 1)
            .read_to_end(&mut raw)
            .map_err(|e| format!("cannot read {at}: {e}"))?;
        if raw.len() as u64 > MAX_TOKEN_FILE_LEN {
            return Err(format!("{at} is too large to hold a token"));
        }
        let token = raw.trim_ascii();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "{at} holds a token shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: the token must be one word of visible ASCII characters"
            ));
        }
        Ok(AdminToken {
            digest: Sha256::digest(token).into(),
        })
    }

    /// Is `presented` the token? Compared as digests, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        bool::from(d.ct_eq(&self.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_checked_like_key_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = write("good", "  s3cr3t-t0ken-of-32-characters!!\n", 0o600);
        let t = AdminToken::load(&good).unwrap();
        assert!(t.matches(b"s3cr3t-t0ken-of-32-characters!!"));
        assert!(!t.matches(b"s3cr3t-t0ken-of-32-characters!"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("s3cr3t"));

        let open = write("open", "s3cr3t-t0ken-of-32-characters!!", 0o644);
        let e = AdminToken::load(&open).unwrap_err();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let short = write("short", "tooshort", 0o600);
        assert!(AdminToken::load(&short).unwrap_err().contains("shorter"));
        let spaced = write("spaced", "two words of token text", 0o400);
        assert!(AdminToken::load(&spaced).unwrap_err().contains("one word"));
        assert!(AdminToken::load(&dir.path().join("absent")).is_err());
        assert!(AdminToken::load(dir.path()).is_err());
    }
}
