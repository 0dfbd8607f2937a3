import hmac, hashlib, base64, unicodedata

def hkdf_sha256(ikm, info, length=32):
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()   # extract, no salt
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]

def index_key(master, scope, name):
    info = b"fieldseal v1 subkey\x00" + b"fieldseal blind index v1\x00" + scope.encode() + b"\x00" + name.encode()
    return hkdf_sha256(master, info)

# Unicode White_Space (what Rust's char::is_whitespace tests); Python's
# str.isspace also counts U+001C..U+001F, so strip() is given the set.
WS = "\t\n\v\f\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u2028\u2029\u202f\u205f\u3000"

def normalize(v, steps):
    if "trim" in steps: v = v.strip(WS)
    if "lowercase" in steps: v = v.lower()
    if "nfc" in steps: v = unicodedata.normalize("NFC", v)
    if "digits" in steps: v = "".join(c for c in v if c in "0123456789")
    return v

def blind_index(master, key_id, scope, name, value, steps, bits):
    mac = hmac.new(index_key(master, scope, name), normalize(value, steps).encode("utf-8"), hashlib.sha256).digest()
    return "fsi1:" + key_id + ":" + base64.urlsafe_b64encode(mac[: bits // 8]).rstrip(b"=").decode()

master = bytes(range(32))
cases = [
    ("deployment", "email_idx", "  Ada@Example.COM ", ["trim", "lowercase"], 64),
    ("deployment", "email_idx", "ada@example.com", ["trim", "lowercase"], 64),
    ("deployment", "ssn_idx", "078-05-1120", ["digits"], 64),
    ("deployment", "ssn_idx", "078 05 1120", ["trim", "digits"], 32),
    ("deployment", "name_idx", "Cafe\u0301 \u039f\u0394\u039f\u03a3", ["lowercase", "nfc"], 128),
    ("deployment", "email_idx", "ada@example.com", [], 256),
    ("deployment", "email_idx", "\u3000Ada@Example.com\x1c", ["trim", "lowercase"], 64),
]
for scope, name, value, steps, bits in cases:
    print(repr((scope, name, value, steps, bits)), blind_index(master, "k1", scope, name, value, steps, bits))

# Tenant or subject scope: the index key comes from that tenant's data key
# (docs/blind-index.md, "Scopes"), the text form names its reference and
# version. Data key = bytes 0x20..0x3f, reference "acmeRef", version 1.
def data_key_index(dek, reference, version, name, value, steps, bits):
    root = hkdf_sha256(dek, b"fieldseal v2 blind index")
    key = hkdf_sha256(root, b"fieldseal v2 blind index\x00" + name.encode())
    mac = hmac.new(key, normalize(value, steps).encode("utf-8"), hashlib.sha256).digest()
    return "fsi2:%s:%d:" % (reference, version) + base64.urlsafe_b64encode(mac[: bits // 8]).rstrip(b"=").decode()

dek = bytes(range(32, 64))
data_key_cases = [
    ("acmeRef", 1, "email_idx", "ada@example.com", ["trim", "lowercase"], 64),
    ("acmeRef", 1, "email_idx", " Ada@Example.COM", ["trim", "lowercase"], 64),
    ("acmeRef", 2, "ssn_idx", "078-05-1120", ["digits"], 128),
]
for ref, ver, name, value, steps, bits in data_key_cases:
    print(repr((ref, ver, name, value, steps, bits)), data_key_index(dek, ref, ver, name, value, steps, bits))
