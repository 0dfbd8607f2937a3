//! `headers` (and a route's `headers`): the security headers on answers,
//! each a value, `false`, or `{ value, upstream: keep | overwrite }`, over
//! the defaults of `headers::SecurityHeader`.

use http::header::HeaderValue;

use super::locate::At;
use super::raw::{RawHeaderValue, RawHeaders};
use super::{invalid, word, Invalid};
use crate::headers::{HeaderSetting, SecurityHeader, SecurityHeaders, UpstreamPolicy};

/// The headers of `route` (its own `headers`, at `at`), over the global
/// ones and the defaults; or the global ones alone.
pub(super) fn compile(
    at: &At,
    global: &RawHeaders,
    route: Option<&RawHeaders>,
) -> Result<SecurityHeaders, Invalid> {
    let mut out = Vec::new();
    for h in SecurityHeader::ALL {
        let own = route.and_then(|r| r.get(h));
        // A value written in the global section is located there.
        let (chosen, at) = match (own, global.get(h)) {
            (Some(v), _) => (v.clone(), at.key(h.config_key())),
            (None, Some(v)) => (v.clone(), At::top("headers").key(h.config_key())),
            (None, None) => match h.default_value() {
                Some(d) => (RawHeaderValue::Value(d.to_string()), at.key(h.config_key())),
                None => continue,
            },
        };
        let shown = at.clone();
        let (value, policy) = match chosen {
            RawHeaderValue::Off(false) => continue,
            RawHeaderValue::Off(true) => {
                return Err(invalid(
                    &shown,
                    "`true` is not a value: give the header value, or `false` to not send it",
                ))
            }
            RawHeaderValue::Value(v) => (v, UpstreamPolicy::Overwrite),
            RawHeaderValue::Detailed(d) => {
                let policy = match &d.upstream {
                    None => UpstreamPolicy::default(),
                    Some(w) => word(&shown.key("upstream"), w, "")?,
                };
                (d.value, policy)
            }
        };
        let value = HeaderValue::from_str(&value)
            .map_err(|_| invalid(&shown, "is not a valid header value"))?;
        out.push(HeaderSetting {
            name: h.http_name(),
            value,
            policy,
        });
    }
    Ok(SecurityHeaders { headers: out })
}

/// A header's config key; any other key is refused, as an unknown field.
impl<'de> serde::Deserialize<'de> for SecurityHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        let key = String::deserialize(d)?;
        SecurityHeader::from_config_key(&key).ok_or_else(|| {
            let keys =
                KEYS.get_or_init(|| SecurityHeader::ALL.map(SecurityHeader::config_key).to_vec());
            serde::de::Error::unknown_field(&key, keys.as_slice())
        })
    }
}
