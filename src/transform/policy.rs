//! What happens to one value the walk found, decided here and nowhere else:
//! keep its bytes, replace it, write `null`, or fail the document. The
//! walk (`stream`) only finds values and writes what these say.

use serde_json::Value;

use super::location::{redacted, Step};
use super::{
    DecryptFailure, Keys, OnDecryptFailure, OnErased, OpenSpec, TransformError, TransformReport,
};
use crate::crypto::{
    envelope_key_id, looks_like_envelope, AeadScratch, DecryptError, Keyring, SubjectKeys, TypeTag,
};

pub(crate) enum Verdict {
    /// The value's bytes stay as they are.
    Keep,
    /// This value is written in its place.
    Replace(Value),
    /// This envelope is written in its place (a string, without the
    /// detour through a `Value`).
    Sealed(String),
    /// `null` is written in its place.
    Null,
    /// Its replacement is already written to the output (the walk wrote
    /// the bytes before the value first): an envelope sealed in place.
    Written,
    /// The string an envelope opened to, left in the walk's `AeadScratch`,
    /// is written in its place.
    OpenedString,
    /// The document fails.
    Fail(TransformError),
}

/// Seal: a value a rule selects, or a look-alike on a `seal` route. A
/// string that already opens under the ring with this context is a genuine
/// envelope for its place and stays; anything else, a mere look-alike of an
/// envelope included, is sealed.
#[inline]
pub(crate) fn seal(
    value: Value,
    context: &str,
    keys: Keys<'_>,
    now: u64,
    report: &mut TransformReport,
) -> Verdict {
    if let Value::String(s) = &value {
        if looks_like_envelope(s) && keys.open_at(s, context, None, now).is_ok() {
            return Verdict::Keep;
        }
    }
    sealed(&value, context, keys, now, report)
}

/// `seal` of a string (its unescaped contents `plain`), sealed straight
/// into `out`, which holds the output up to the value: `Written`, `Keep`
/// (a genuine envelope for its place) or `Fail`. No allocation.
#[inline]
pub(crate) fn seal_str(
    plain: &str,
    context: &str,
    keys: Keys<'_>,
    now: u64,
    report: &mut TransformReport,
    (scratch, out): (&mut AeadScratch, &mut Vec<u8>),
) -> Verdict {
    if looks_like_envelope(plain) && keys.open_at(plain, context, None, now).is_ok() {
        return Verdict::Keep;
    }
    match keys.seal.seal_str_into(plain, context, now, scratch, out) {
        Ok(()) => {
            report.encrypted += 1;
            Verdict::Written
        }
        Err(e) => Verdict::Fail(e.into()),
    }
}

/// The guard: a string outside the rules. The `fs1:` prefix is reserved:
/// a client string that uses it without being a genuine envelope for its
/// place (or for a context some rule of the configuration names) is sealed
/// too, so stored data holds only real envelopes. It then cannot be made to
/// fail decryption (a 502 for every reader on `decrypt: auto` routes), and
/// reads back as the string the client sent.
#[inline]
pub(crate) fn guard(
    s: &str,
    context: &str,
    named_contexts: &[String],
    keys: Keys<'_>,
    now: u64,
    report: &mut TransformReport,
) -> Verdict {
    if !looks_like_envelope(s) {
        return Verdict::Keep;
    }
    let opens = |c: &str| keys.open_at(s, c, None, now).is_ok();
    if opens(context) || named_contexts.iter().any(|c| opens(c)) {
        return Verdict::Keep;
    }
    sealed(&Value::String(s.to_owned()), context, keys, now, report)
}

#[inline]
fn sealed(
    value: &Value,
    context: &str,
    keys: Keys<'_>,
    now: u64,
    report: &mut TransformReport,
) -> Verdict {
    match keys.seal.seal_at(value, context, now) {
        Ok(sealed) => {
            report.encrypted += 1;
            Verdict::Sealed(sealed)
        }
        Err(e) => Verdict::Fail(e.into()),
    }
}

/// Open: an envelope a rule selects (or any string, for `decrypt: auto`),
/// opened with `context` and the route's `max_age`. Other strings stay. A
/// failure is located at `path` showing only the member names in `names`
/// (the rule's), and handled as `on_decrypt_failure` says. The envelope
/// is opened in `scratch`: a string stays there (`OpenedString`).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn open(
    s: &str,
    context: &str,
    spec: &OpenSpec,
    (ring, subjects): (&Keyring, &SubjectKeys),
    now: u64,
    report: &mut TransformReport,
    at: (&[Step<'_>], &[String]),
    scratch: &mut AeadScratch,
) -> Verdict {
    if !looks_like_envelope(s) {
        return Verdict::Keep;
    }
    let opened = ring
        .open_in(subjects, s, context, spec.max_age, now, scratch)
        .and_then(|o| {
            let plain = scratch.plaintext();
            let verdict = match o.tag {
                TypeTag::String => std::str::from_utf8(plain)
                    .map(|_| Verdict::OpenedString)
                    .map_err(|_| DecryptError::Malformed)?,
                tag => Verdict::Replace(tag.rebuild(plain)?),
            };
            Ok((o.key_id, verdict))
        });
    match opened {
        Ok((key_id, verdict)) => {
            report.note_key(key_id);
            report.decrypted += 1;
            verdict
        }
        Err(e) => {
            let f = failure(s, e, at);
            let mode = match e {
                DecryptError::ForeignSubject => spec.on_foreign,
                DecryptError::Erased => match spec.on_erased {
                    OnErased::Error => OnDecryptFailure::Error,
                    OnErased::Null => OnDecryptFailure::Null,
                    OnErased::Keep => OnDecryptFailure::Keep,
                    OnErased::Marker => {
                        report.failures.push(f);
                        return Verdict::Replace(Value::String(spec.erased_marker.clone()));
                    }
                },
                _ => spec.on_failure,
            };
            match mode {
                OnDecryptFailure::Error => Verdict::Fail(TransformError::Decrypt(f)),
                OnDecryptFailure::Null => {
                    report.failures.push(f);
                    Verdict::Null
                }
                OnDecryptFailure::Keep => {
                    report.failures.push(f);
                    Verdict::Keep
                }
            }
        }
    }
}

/// Rewrap: an envelope is authenticated (no `max_age` applies) and, unless
/// it is already under the sealing key, sealed again under it with the same
/// context and type, keeping its first sealing time so `max_age` still
/// counts from there. Plaintext never leaves this function.
#[inline]
pub(crate) fn rewrap(
    s: &str,
    context: &str,
    keys: Keys<'_>,
    now: u64,
    report: &mut TransformReport,
    at: (&[Step<'_>], &[String]),
) -> Verdict {
    if !looks_like_envelope(s) {
        return Verdict::Keep;
    }
    let opened = match keys.open_at(s, context, None, now) {
        Ok(o) => o,
        Err(e) => return Verdict::Fail(TransformError::Decrypt(failure(s, e, at))),
    };
    report.decrypted += 1;
    report.note_key(&opened.key_id);
    if opened.key_id == keys.seal.id() {
        return Verdict::Keep;
    }
    match keys.seal.seal_at(&opened.value, context, opened.issued_at) {
        Ok(sealed) => {
            report.encrypted += 1;
            Verdict::Sealed(sealed)
        }
        Err(e) => Verdict::Fail(e.into()),
    }
}

fn failure(
    envelope: &str,
    e: DecryptError,
    (path, names): (&[Step<'_>], &[String]),
) -> DecryptFailure {
    DecryptFailure {
        location: redacted(path, names),
        key_id: envelope_key_id(envelope).map(str::to_owned),
        reason: e.reason(),
    }
}
