"""QUIC Initial decryption: client datagrams of one UDP flow → the ClientHello handshake body.

Place in the data flow: the pipeline keeps one `InitialAssembler` per UDP flow that looks like QUIC
(`is_initial`) and feeds it the client → server datagrams. Initial packets are encrypted, but with
keys anyone can derive from the client's first Destination Connection ID (RFC 9001 §5.2), so an
observer can read the TLS ClientHello carried in CRYPTO frames. The returned body goes to
`tls.client_hello_fields(body, quic=True)` for SNI/ALPN/JA4 ("q" prefix).

Versions: QUIC v1 (RFC 9000/9001), v2 (RFC 9369: other salt, labels and Initial type bits) and
drafts 23..34 (older salts). All peer captures are v1.

Cost is bounded: header protection is one AES-ECB block, the AEAD is one AES-128-GCM call per
Initial packet, CRYPTO bytes are capped at 64 KiB per flow, and after the ClientHello is returned
`feed` returns at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.decode.anomaly import Malformed

_V1 = 0x00000001
_V2 = 0x6B3343CF
# RFC 9001 §5.2 (v1, also used by draft-33/34), RFC 9369 §3.3.1 (v2), draft-29..32 and draft-23..28.
_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")


def _version_params(version: int) -> tuple[bytes, str, int] | None:
    """(initial salt, label prefix, Initial long-header type) for a version we can decrypt."""
    if version == _V1:
        return _SALT_V1, "quic", 0
    if version == _V2:
        return _SALT_V2, "quicv2", 1  # RFC 9369 §3.2: Initial is type 0b01 in v2
    if 0xFF000017 <= version <= 0xFF000022:  # draft-23 .. draft-34
        draft = version & 0xFF
        salt = _SALT_V1 if draft >= 33 else _SALT_D29 if draft >= 29 else _SALT_D23
        return salt, "quic", 0
    return None


# Frame types allowed in Initial packets (RFC 9000 §17.2.2, table 3): anything else is a violation.
_F_PADDING = 0x00
_F_PING = 0x01
_F_ACK = 0x02
_F_ACK_ECN = 0x03
_F_CRYPTO = 0x06
_F_CLOSE = 0x1C

_NON_ZERO = re.compile(rb"[^\x00]")
_MAX_CRYPTO = 64 * 1024  # bound per flow; real ClientHellos are < 8 KiB even with PQ key shares
_MAX_KEYSETS = 4  # distinct DCIDs we derive keys for (Retry / server-chosen CIDs), per flow


def _hkdf_expand_label(secret: bytes, label: str, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1), empty context; length <= 32."""
    full = b"tls13 " + label.encode("ascii")
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]


class _Keys:
    """Client Initial packet protection keys for one DCID (RFC 9001 §5.2)."""

    __slots__ = ("aead", "iv", "hp")

    def __init__(self, dcid: bytes, salt: bytes, prefix: str) -> None:
        initial = hmac.new(salt, dcid, hashlib.sha256).digest()  # HKDF-Extract
        client = _hkdf_expand_label(initial, "client in", 32)
        self.aead = AESGCM(_hkdf_expand_label(client, prefix + " key", 16))
        self.iv = _hkdf_expand_label(client, prefix + " iv", 12)
        self.hp = Cipher(algorithms.AES(_hkdf_expand_label(client, prefix + " hp", 16)), modes.ECB())


def derive_client_keys(dcid: bytes, version: int) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) for the client's Initial packets; exposed for the RFC test vectors."""
    params = _version_params(version)
    if params is None:
        raise Malformed("QUIC_unknown_version")
    salt, prefix, _ = params
    client = _hkdf_expand_label(hmac.new(salt, dcid, hashlib.sha256).digest(), "client in", 32)
    return (_hkdf_expand_label(client, prefix + " key", 16), _hkdf_expand_label(client, prefix + " iv", 12),
            _hkdf_expand_label(client, prefix + " hp", 16))


def is_initial(payload: bytes) -> bool:
    """Cheap pre-check: long header, fixed bit, a version we decrypt, Initial type, sane CID lengths."""
    if len(payload) < 7 or (payload[0] & 0xC0) != 0xC0:
        return False
    params = _version_params(int.from_bytes(payload[1:5], "big"))
    if params is None or ((payload[0] >> 4) & 3) != params[2]:
        return False
    return payload[5] <= 20  # RFC 9000 §17.2: CIDs are at most 20 bytes in v1


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at pos → (value, new pos)."""
    if pos >= end:
        raise Malformed("QUIC_truncated", "varint")
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > end:
        raise Malformed("QUIC_truncated", "varint")
    v = first & 0x3F
    for i in range(pos + 1, pos + n):
        v = (v << 8) | buf[i]
    return v, pos + n


class InitialAssembler:
    """Per-flow state: Initial keys, CRYPTO stream reassembly, and whether we are done.

    `feed` returns the ClientHello body (handshake header removed, like `tls.parse_records`) exactly
    once, when its bytes are all present; None otherwise. Raises Malformed for packets that claim to
    be Initial but cannot be parsed or authenticated.
    """

    __slots__ = ("_keys", "_chunks", "_crypto_bytes", "_done", "_largest_pn", "_result")

    def __init__(self) -> None:
        self._keys: dict[tuple[int, bytes], _Keys] = {}
        self._chunks: dict[int, bytes] = {}  # CRYPTO offset → data
        self._crypto_bytes = 0
        self._done = False
        self._largest_pn = -1
        self._result: bytes | None = None

    @property
    def done(self) -> bool:
        """True once the ClientHello has been returned; later datagrams are ignored."""
        return self._done

    def feed(self, payload: bytes) -> bytes | None:
        if self._done:
            return None
        pos = 0
        n = len(payload)
        # RFC 9000 §12.2: a datagram may hold several coalesced long-header packets, then at most one
        # short-header packet (which never carries Initial data, so we stop there).
        while pos < n and (payload[pos] & 0x80):
            pos = self._packet(payload, pos, n)
            if self._done:
                return self._result
        return None

    def _packet(self, buf: bytes, start: int, n: int) -> int:
        """Handle one long-header packet at `start`; return where the next one begins."""
        if start + 7 > n:
            raise Malformed("QUIC_truncated", "long header")
        first = buf[start]
        version = int.from_bytes(buf[start + 1:start + 5], "big")
        params = _version_params(version)
        if params is None:
            # Version negotiation (0) or a version we cannot decrypt: nothing readable, not an error.
            return n
        if not first & 0x40:
            raise Malformed("QUIC_bad_header", "fixed bit clear")
        salt, prefix, initial_type = params
        dlen = buf[start + 5]
        pos = start + 6 + dlen
        if dlen > 20 or pos >= n:
            raise Malformed("QUIC_bad_header", "dcid")
        dcid = buf[start + 6:pos]
        slen = buf[pos]
        pos += 1 + slen
        if slen > 20 or pos > n:
            raise Malformed("QUIC_bad_header", "scid")
        ptype = (first >> 4) & 3
        if ptype == initial_type:
            token_len, pos = _varint(buf, pos, n)
            pos += token_len
        elif ptype == (3 if version != _V2 else 0):
            return n  # Retry from a client is nonsense and has no Length field: skip the datagram
        length, pos = _varint(buf, pos, n)
        end = pos + length
        if end > n:
            raise Malformed("QUIC_truncated", "packet length exceeds datagram")
        if ptype != initial_type:
            return end  # 0-RTT / Handshake: other keys, skip by Length
        if length < 20:
            raise Malformed("QUIC_truncated", "too short for header protection sample")
        plaintext = self._decrypt(buf, start, pos, end, dcid, version, salt, prefix)
        self._frames(plaintext)
        return end

    def _keys_for(self, version: int, dcid: bytes, salt: bytes, prefix: str) -> list[_Keys]:
        """Keys to try: the first DCID's (kept for the whole handshake, RFC 9001 §5.2) then this DCID's."""
        out = list(self._keys.values())
        if (version, dcid) not in self._keys and len(self._keys) < _MAX_KEYSETS:
            k = _Keys(dcid, salt, prefix)
            self._keys[(version, dcid)] = k
            out.append(k)
        return out

    def _decrypt(self, buf: bytes, start: int, pn_off: int, end: int, dcid: bytes, version: int,
                 salt: bytes, prefix: str) -> bytes:
        for keys in self._keys_for(version, dcid, salt, prefix):
            # RFC 9001 §5.4.2: the sample starts 4 bytes after the start of the Packet Number field.
            enc = keys.hp.encryptor()
            mask = enc.update(buf[pn_off + 4:pn_off + 20])
            first = buf[start] ^ (mask[0] & 0x0F)
            pn_len = (first & 3) + 1
            truncated = int.from_bytes(buf[pn_off:pn_off + pn_len], "big") ^ int.from_bytes(
                mask[1:1 + pn_len], "big")
            pn_bytes = truncated.to_bytes(pn_len, "big")
            pn = self._decode_pn(truncated, pn_len * 8)
            header = bytes([first]) + buf[start + 1:pn_off] + pn_bytes
            nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
            try:
                plaintext = keys.aead.decrypt(nonce, buf[pn_off + pn_len:end], header)
            except InvalidTag:
                continue
            if pn > self._largest_pn:
                self._largest_pn = pn
            return plaintext
        raise Malformed("QUIC_decrypt_failed")

    def _decode_pn(self, truncated: int, bits: int) -> int:
        """RFC 9000 Appendix A.3: full packet number nearest to the next expected one."""
        expected = self._largest_pn + 1
        win = 1 << bits
        hwin = win // 2
        candidate = (expected & ~(win - 1)) | truncated
        if candidate <= expected - hwin and candidate < (1 << 62) - win:
            return candidate + win
        if candidate > expected + hwin and candidate >= win:
            return candidate - win
        return candidate

    def _frames(self, p: bytes) -> None:
        """Parse the frames of a decrypted Initial payload; keep CRYPTO data (RFC 9000 §19)."""
        pos = 0
        n = len(p)
        while pos < n:
            ftype = p[pos]
            pos += 1
            if ftype == _F_PADDING:
                # Clients pad Initials to 1200 bytes (RFC 9000 §14.1): skip the zero run in C, not per byte.
                m = _NON_ZERO.search(p, pos)
                pos = m.start() if m else n
                continue
            if ftype == _F_PING:
                continue
            if ftype == _F_CRYPTO:
                off, pos = _varint(p, pos, n)
                ln, pos = _varint(p, pos, n)
                if pos + ln > n:
                    raise Malformed("QUIC_bad_frame", "CRYPTO length")
                self._add_crypto(off, p[pos:pos + ln])
                pos += ln
            elif ftype == _F_ACK or ftype == _F_ACK_ECN:
                _, pos = _varint(p, pos, n)  # largest acknowledged
                _, pos = _varint(p, pos, n)  # ack delay
                count, pos = _varint(p, pos, n)
                _, pos = _varint(p, pos, n)  # first range
                if count > n:
                    raise Malformed("QUIC_bad_frame", "ACK range count")
                for _ in range(2 * count + (3 if ftype == _F_ACK_ECN else 0)):
                    _, pos = _varint(p, pos, n)
            elif ftype == _F_CLOSE:
                _, pos = _varint(p, pos, n)  # error code
                _, pos = _varint(p, pos, n)  # frame type
                rlen, pos = _varint(p, pos, n)
                pos += rlen
            else:
                raise Malformed("QUIC_bad_frame", f"frame type {ftype:#x} in Initial")
        self._try_complete()

    def _add_crypto(self, off: int, data: bytes) -> None:
        if not data:
            return
        if off + len(data) > _MAX_CRYPTO or self._crypto_bytes + len(data) > 2 * _MAX_CRYPTO:
            raise Malformed("QUIC_crypto_too_large")
        old = self._chunks.get(off)
        if old is None or len(old) < len(data):  # retransmissions repeat offsets; keep the longest
            self._crypto_bytes += len(data) - (len(old) if old else 0)
            self._chunks[off] = data

    def _try_complete(self) -> None:
        """Join chunks contiguous from offset 0; done when the first handshake message is whole."""
        if 0 not in self._chunks:
            return
        stream = bytearray()
        for off in sorted(self._chunks):
            if off > len(stream):
                break
            data = self._chunks[off]
            if off + len(data) > len(stream):
                stream += data[len(stream) - off:]
        if len(stream) < 4:
            return
        if stream[0] != 1:
            raise Malformed("QUIC_not_client_hello")
        hlen = int.from_bytes(stream[1:4], "big")
        if 4 + hlen > _MAX_CRYPTO:
            raise Malformed("TLS_handshake_len_lies")
        if len(stream) >= 4 + hlen:
            self._result = bytes(stream[4:4 + hlen])
            self._done = True
            self._chunks = {}  # free the per-flow state at once; the flow table may keep us longer
            self._keys = {}
