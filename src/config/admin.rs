//! `admin`: the admin listener's address and token file, or `off`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::locate::At;
use super::raw::{RawAdmin, Word};
use super::{address, invalid, resolve, Invalid};

/// Where the admin listener binds when the config does not say.
pub const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

pub(super) struct AdminSettings {
    /// None: `admin: off`.
    pub address: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// The address is written in the file (not the default).
    pub written: bool,
}

pub(super) fn compile(raw: Option<&RawAdmin>, base: &Path) -> Result<AdminSettings, Invalid> {
    let at = At::top("admin");
    let off = AdminSettings {
        address: None,
        token_file: None,
        written: false,
    };
    let settings = match raw {
        None => {
            return Ok(AdminSettings {
                address: Some(DEFAULT_ADDRESS),
                ..off
            })
        }
        Some(RawAdmin::Switch(false) | RawAdmin::Keyword(Word::Known(_))) => return Ok(off),
        Some(RawAdmin::Switch(true) | RawAdmin::Keyword(Word::Unknown(_))) => {
            return Err(invalid(
                &at,
                "expected `off` (no admin listener) or { address: \"127.0.0.1:9901\", token_file: ... }",
            ))
        }
        Some(RawAdmin::Settings(a)) => a,
    };
    let address = match &settings.address {
        Some(s) => address(&at.key("address"), s)?,
        None => DEFAULT_ADDRESS,
    };
    let token_file = match settings.token_file.as_deref() {
        Some("") => {
            return Err(invalid(
                &at.key("token_file"),
                "is empty: give the path of a file holding the token",
            ))
        }
        Some(p) => Some(resolve(base, p)),
        None => None,
    };
    Ok(AdminSettings {
        address: Some(address),
        token_file,
        written: settings.address.is_some(),
    })
}
