"""TLS 1.3 ClientHello / ServerHello byte builders with client-software profiles, for the simulator.

Relay detection keys on who speaks TLS to a model API: browsers and official SDKs on ordinary hosts,
a Go or Node HTTP library on a reseller's relay. So each profile reproduces the wire shape of one
client stack: cipher order, extension order, GREASE (RFC 8701), supported groups and key shares,
including the post-quantum X25519MLKEM768 share (group 0x11ec, 1216 bytes, draft-kwiatkowski-tls-
ecdhe-mlkem) that pushes a Chrome/Firefox ClientHello past one 1460-byte TCP segment.

Each built hello also returns its JA3 and JA4 (FoxIO JA4 spec, BSD-3) as ground truth for decoder tests.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass

GREASE = tuple(0x0A0A + 0x1010 * i for i in range(16))  # RFC 8701 §2
G = -1  # placeholder for "a GREASE value here" in profile lists

X25519, SECP256R1, SECP384R1, SECP521R1, X25519MLKEM768 = 29, 23, 24, 25, 0x11EC
KEY_SIZES = {X25519: 32, SECP256R1: 65, SECP384R1: 97, SECP521R1: 133, X25519MLKEM768: 1216}
SERVER_KEY_SIZES = {X25519: 32, SECP256R1: 65, X25519MLKEM768: 1120}  # ML-KEM ciphertext + X25519

# Extension type numbers (IANA TLS ExtensionType registry).
SNI, STATUS, GROUPS, ECPF, SIGALGS, ALPN, SCT, PADDING, ETM, EMS = 0, 5, 10, 11, 13, 16, 18, 21, 22, 23
COMPRESS_CERT, RSL, TICKET, PSK_MODES, VERSIONS, DELEG, KEY_SHARE = 27, 28, 35, 45, 43, 34, 51
ALPS, ECH, RENEG = 0x4469, 0xFE0D, 0xFF01

_CHROME_SIGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
_FIREFOX_SIGS = (0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0203, 0x0201)
_OPENSSL_SIGS = (0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x081A, 0x081B, 0x081C, 0x0809, 0x080A,
                 0x080B, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601)
_GO_SIGS = (0x0804, 0x0403, 0x0807, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0503, 0x0603, 0x0201)


@dataclass(frozen=True)
class Profile:
    """The wire shape of one TLS client stack."""

    name: str
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]  # wire order; G = a GREASE extension
    groups: tuple[int, ...]
    shares: tuple[int, ...]
    sigalgs: tuple[int, ...]
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    shuffle: bool = False  # Chrome ≥ 110 permutes its extensions per connection
    pad_to: int = 0  # BoringSSL-style padding extension target length
    user_agent: str = ""

    @property
    def pq(self) -> bool:
        return X25519MLKEM768 in self.shares


_CHROME_CIPHERS = (G, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014,
                   0x009C, 0x009D, 0x002F, 0x0035)
_CHROME_EXT = (G, SNI, EMS, RENEG, GROUPS, ECPF, TICKET, ALPN, STATUS, SIGALGS, SCT, KEY_SHARE, PSK_MODES,
               VERSIONS, COMPRESS_CERT, ALPS, ECH, G)
_FIREFOX_CIPHERS = (0x1301, 0x1303, 0x1302, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030, 0xC00A, 0xC009,
                    0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
_FIREFOX_EXT = (SNI, EMS, RENEG, GROUPS, ECPF, TICKET, ALPN, STATUS, DELEG, SCT, KEY_SHARE, VERSIONS, SIGALGS,
                PSK_MODES, RSL, COMPRESS_CERT, ECH)
_OPENSSL_CIPHERS = (0x1302, 0x1303, 0x1301, 0xC02C, 0xC030, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0x009F, 0x009E,
                    0xCCAA, 0xC024, 0xC028, 0xC023, 0xC027, 0x006B, 0x0067, 0xC00A, 0xC014, 0xC009, 0xC013,
                    0x0039, 0x0033, 0x009D, 0x009C, 0x003D, 0x003C, 0x0035, 0x002F, 0x00FF)
_OPENSSL_EXT = (SNI, ECPF, GROUPS, TICKET, ALPN, ETM, EMS, SIGALGS, VERSIONS, PSK_MODES, KEY_SHARE)
_NODE_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC009, 0xC013,
                 0xC00A, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035, 0x00FF)
# Go crypto/tls (1.22): no GREASE, AES-GCM first when the CPU has AES-NI, its own extension order.
_GO_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC009, 0xC013,
               0xC00A, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
_GO_EXT = (SNI, STATUS, GROUPS, ECPF, TICKET, SIGALGS, RENEG, ALPN, SCT, VERSIONS, KEY_SHARE, EMS)

_UA_CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")
_UA_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"

PROFILES: dict[str, Profile] = {
    "chrome-pq": Profile("chrome-pq", _CHROME_CIPHERS, _CHROME_EXT, (G, X25519MLKEM768, X25519, SECP256R1,
                         SECP384R1), (G, X25519MLKEM768, X25519), _CHROME_SIGS, ("h2", "http/1.1"),
                         (G, 0x0304, 0x0303), shuffle=True, user_agent=_UA_CHROME),
    "chrome": Profile("chrome", _CHROME_CIPHERS, (*_CHROME_EXT[:-1], PADDING, G),
                      (G, X25519, SECP256R1, SECP384R1), (G, X25519), _CHROME_SIGS, ("h2", "http/1.1"),
                      (G, 0x0304, 0x0303), shuffle=True, pad_to=512,
                      user_agent=_UA_CHROME.replace("131.", "119.")),
    "firefox-pq": Profile("firefox-pq", _FIREFOX_CIPHERS, _FIREFOX_EXT, (X25519MLKEM768, X25519, SECP256R1,
                          SECP384R1, SECP521R1, 256, 257), (X25519MLKEM768, X25519, SECP256R1),
                          _FIREFOX_SIGS, ("h2", "http/1.1"), (0x0304, 0x0303), user_agent=_UA_FIREFOX),
    "firefox": Profile("firefox", _FIREFOX_CIPHERS, _FIREFOX_EXT, (X25519, SECP256R1, SECP384R1, SECP521R1,
                       256, 257), (X25519, SECP256R1), _FIREFOX_SIGS, ("h2", "http/1.1"), (0x0304, 0x0303),
                       user_agent=_UA_FIREFOX.replace("133", "115")),
    "python-openai": Profile("python-openai", _OPENSSL_CIPHERS, _OPENSSL_EXT,
                             (X25519, SECP256R1, 30, SECP521R1, SECP384R1, 256, 257, 258, 259, 260),
                             (X25519,), _OPENSSL_SIGS, ("http/1.1",), (0x0304, 0x0303),
                             user_agent="OpenAI/Python 1.58.1"),
    "node-openai": Profile("node-openai", _NODE_CIPHERS, _OPENSSL_EXT, (X25519, SECP256R1, SECP384R1),
                           (X25519,), _OPENSSL_SIGS[:3] + _OPENSSL_SIGS[11:], ("http/1.1",),
                           (0x0304, 0x0303), user_agent="OpenAI/JS 4.77.0"),
    "curl": Profile("curl", _OPENSSL_CIPHERS, (SNI, ECPF, GROUPS, TICKET, ALPN, ETM, EMS, SIGALGS,
                    VERSIONS, PSK_MODES, KEY_SHARE), (X25519, SECP256R1, 30, SECP521R1, SECP384R1),
                    (X25519,), _OPENSSL_SIGS, ("h2", "http/1.1"), (0x0304, 0x0303), user_agent="curl/8.5.0"),
    "go": Profile("go", _GO_CIPHERS, _GO_EXT, (X25519, SECP256R1, SECP384R1, SECP521R1), (X25519,), _GO_SIGS,
                  ("h2", "http/1.1"), (0x0304, 0x0303), user_agent="Go-http-client/2.0"),
}
BROWSER_PQ = ("chrome-pq", "firefox-pq")
BROWSER_CLASSIC = ("chrome", "firefox")
SDK = ("python-openai", "node-openai", "curl")


@dataclass(frozen=True)
class Hello:
    """A built ClientHello TLS record and its ground-truth fingerprints."""

    record: bytes
    sni: str
    profile: str
    ja3_string: str
    ja3: str
    ja4: str


def _u16s(values: list[int]) -> bytes:
    return struct.pack(f"!{len(values)}H", *values)


def _vec8(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def _vec16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def _alpn_body(protos: tuple[str, ...]) -> bytes:
    return _vec16(b"".join(_vec8(p.encode()) for p in protos))


def _ext_body(p: Profile, etype: int, sni: str, grease: list[int], rng: random.Random) -> bytes:
    """The body of one extension of profile p (GREASE values already drawn in `grease`)."""
    g = lambda v: grease[0] if v == G else v  # noqa: E731 - a one-line substitution
    if etype == SNI:
        name = sni.encode()
        return _vec16(b"\0" + _vec16(name))
    if etype == GROUPS:
        return _vec16(_u16s([g(x) for x in p.groups]))
    if etype == ECPF:
        return _vec8(b"\0")
    if etype == SIGALGS:
        return _vec16(_u16s(list(p.sigalgs)))
    if etype == ALPN:
        return _alpn_body(p.alpn)
    if etype == ALPS:
        return _vec16(_vec8(b"h2"))
    if etype == STATUS:
        return b"\x01\x00\x00\x00\x00"
    if etype == VERSIONS:
        return _vec8(_u16s([grease[2] if v == G else v for v in p.versions]))
    if etype == PSK_MODES:
        return _vec8(b"\x01")
    if etype == COMPRESS_CERT:
        return _vec8(b"\x00\x02") if p.name.startswith("chrome") else _vec8(b"\x00\x01\x00\x02\x00\x03")
    if etype == RSL:
        return b"\x40\x01"
    if etype == DELEG:
        return _vec16(_u16s([0x0403, 0x0503, 0x0603, 0x0203]))
    if etype == KEY_SHARE:
        shares = b""
        for grp in p.shares:
            if grp == G:
                shares += struct.pack("!H", grease[0]) + _vec16(b"\0")
            else:
                shares += struct.pack("!H", grp) + _vec16(rng.randbytes(KEY_SIZES[grp]))
        return _vec16(shares)
    if etype == ECH:
        # GREASE ECH (draft-ietf-tls-esni §6.2): outer, HKDF-SHA256, AES-128-GCM, random config id.
        enc, payload = rng.randbytes(32), rng.randbytes(rng.choice((144, 176, 208, 240)))
        return b"\x00\x00\x01\x00\x01" + bytes([rng.getrandbits(8)]) + _vec16(enc) + _vec16(payload)
    if etype == RENEG:
        return b"\x00"
    return b""  # EMS, ETM, SCT, session ticket, GREASE: empty


def client_hello(profile: str | Profile, sni: str, rng: random.Random) -> Hello:
    """A ClientHello TLS record for `profile` with SNI `sni`, random fields drawn from rng."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    grease = rng.sample(GREASE, 4)  # cipher/group, extension first, version, extension last
    ciphers = [grease[0] if c == G else c for c in p.ciphers]
    order = list(p.extensions)
    if p.shuffle:
        # Chrome keeps GREASE first/last and padding last, and permutes the rest.
        head, tail = order[0], order[-2:] if order[-2] == PADDING else order[-1:]
        middle = order[1:len(order) - len(tail)]
        rng.shuffle(middle)
        order = [head, *middle, *tail]
    exts: list[tuple[int, bytes]] = []
    seen_grease = 0
    for e in order:
        if e == G:
            exts.append((grease[1] if seen_grease == 0 else grease[3], b"" if seen_grease == 0 else b"\0"))
            seen_grease += 1
        elif e != PADDING:
            exts.append((e, _ext_body(p, e, sni, grease, rng)))
        else:
            exts.append((PADDING, b""))
    body_wo_ext = b"\x03\x03" + rng.randbytes(32) + _vec8(rng.randbytes(32)) + _vec16(_u16s(ciphers)) + b"\x01\x00"

    def assemble() -> bytes:
        return b"".join(_ext(t, b) for t, b in exts)

    if p.pad_to:
        # BoringSSL pads hellos of 256..511 bytes up to 512 (RFC 7685 §4, the F5 bug work-around).
        n = len(body_wo_ext) + 2 + len(assemble()) + 4
        need = max(p.pad_to - n, 1) if n < p.pad_to else 1
        exts = [(t, b"\0" * need if t == PADDING else b) for t, b in exts]
    hs_body = body_wo_ext + _vec16(assemble())
    hs = b"\x01" + len(hs_body).to_bytes(3, "big") + hs_body
    record = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
    ja3s, ja3h, ja4 = _fingerprints(p, ciphers, [t for t, _ in exts], sni)
    return Hello(record, sni, p.name, ja3s, ja3h, ja4)


def _fingerprints(p: Profile, ciphers: list[int], ext_types: list[int], sni: str) -> tuple[str, str, str]:
    """JA3 string/MD5 and JA4 of a hello, GREASE removed (JA3: Salesforce; JA4: FoxIO spec)."""
    gset = set(GREASE)
    cs = [c for c in ciphers if c not in gset]
    ex = [e for e in ext_types if e not in gset]
    groups = [x for x in p.groups if x != G]
    ja3_string = "771,{},{},{},0".format("-".join(map(str, cs)), "-".join(map(str, ex)),
                                         "-".join(map(str, groups)))
    ja3 = hashlib.md5(ja3_string.encode()).hexdigest()  # noqa: S324 - JA3 is defined as MD5
    versions = [v for v in p.versions if v != G]
    ver = {0x0304: "13", 0x0303: "12"}[max(versions)]
    alpn = p.alpn[0] if p.alpn else ""
    a = (alpn[0] + alpn[-1]) if alpn else "00"
    ja4_a = f"t{ver}{'d' if sni else 'i'}{min(len(cs), 99):02d}{min(len(ex), 99):02d}{a}"
    ja4_b = hashlib.sha256(",".join(sorted(f"{c:04x}" for c in cs)).encode()).hexdigest()[:12]
    ext_str = ",".join(sorted(f"{e:04x}" for e in ex if e not in (SNI, ALPN)))
    sig_str = ",".join(f"{s:04x}" for s in p.sigalgs)
    ja4_c = hashlib.sha256(f"{ext_str}_{sig_str}".encode()).hexdigest()[:12]
    return ja3_string, ja3, f"{ja4_a}_{ja4_b}_{ja4_c}"


def server_hello(hello: Hello, rng: random.Random, cipher: int = 0x1301) -> bytes:
    """ServerHello record (TLS 1.3, echoing the session id and picking the client's first share),
    then ChangeCipherSpec, then the encrypted EncryptedExtensions..Finished flight as app data."""
    sid = hello.record[43:43 + 33]  # length byte + 32-byte legacy session id
    group = X25519MLKEM768 if hello.profile in BROWSER_PQ else X25519
    exts = _ext(VERSIONS, b"\x03\x04") + _ext(KEY_SHARE, struct.pack("!H", group) +
                                                _vec16(rng.randbytes(SERVER_KEY_SIZES[group])))
    body = b"\x03\x03" + rng.randbytes(32) + sid + struct.pack("!H", cipher) + b"\x00" + _vec16(exts)
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    sh = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs
    flight = app_data(rng, rng.randint(2400, 4200))  # certificate chain + CertificateVerify + Finished
    return sh + b"\x14\x03\x03\x00\x01\x01" + flight


def client_finished(rng: random.Random) -> bytes:
    """The client's ChangeCipherSpec and encrypted Finished (RFC 8446 §D.4 middlebox compatibility)."""
    return b"\x14\x03\x03\x00\x01\x01" + app_data(rng, 53)


def app_data(rng: random.Random, n: int) -> bytes:
    """TLS application_data records carrying n bytes of ciphertext (split at 16 KiB + tag)."""
    out = []
    while n > 0:
        k = min(n, 16401)
        out.append(b"\x17\x03\x03" + struct.pack("!H", k) + rng.randbytes(k))
        n -= k
    return b"".join(out)
