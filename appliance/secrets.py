"""Keyed fingerprints of secrets: API keys, Authorization values, card numbers, emails.

Raw secrets never leave the process. Every decoder and ingester passes them through here before
they reach an event, a log line, an alert or a file. The fingerprint is HMAC-SHA256 under a
deployment secret (config `secret`, env APPLIANCE_SECRET or APPLIANCE_SECRET_FILE), so the same key
gives the same fingerprint across runs of one deployment, and nobody without the secret can test
a guessed key against it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets as _random

log = logging.getLogger(__name__)

FINGERPRINT_PREFIX = "fp:"
_FINGERPRINT_HEX = 24  # 96 bits: collision-free at any realistic key count, short enough to read

_key: bytes | None = None


def set_secret(secret: str | bytes | None) -> None:
    """Install the deployment secret (from config). None falls back to the environment."""
    global _key
    if secret is None:
        _key = None
        return
    _key = secret.encode() if isinstance(secret, str) else bytes(secret)


def _secret() -> bytes:
    global _key
    if _key is None:
        env = os.environ.get("APPLIANCE_SECRET")
        path = os.environ.get("APPLIANCE_SECRET_FILE")
        if env:
            _key = env.encode()
        elif path:
            with open(path, "rb") as fh:
                _key = fh.read().strip()
        else:
            log.warning(
                "no deployment secret configured (APPLIANCE_SECRET or config 'secret'): "
                "using a random one, so fingerprints will differ between runs"
            )
            _key = _random.token_bytes(32)
    return _key


def fingerprint(value: str | bytes, kind: str = "") -> str:
    """Keyed fingerprint of one secret value. `kind` separates namespaces (key vs email)."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    mac = hmac.new(_secret(), kind.encode() + b"\0" + data, hashlib.sha256).hexdigest()
    return FINGERPRINT_PREFIX + mac[:_FINGERPRINT_HEX]


# Known credential shapes, most specific first. Formats from the relays' and providers' own docs:
# one-api `sk-`+48 alnum, sub2api `sk-`+64 hex, claude-relay-service `cr_`+64 hex, LiteLLM `sk-`+22.
_KEY_PREFIXES = ("sk-ant-api03-", "sk-ant-", "sk-proj-", "sk-svcacct-", "sk-or-v1-", "sk-", "cr_", "AIza", "gsk_", "xai-", "pk-", "rk-")
_CLASSES = (
    ("hex", re.compile(r"[0-9a-f]+|[0-9A-F]+")),
    ("alnum", re.compile(r"[0-9A-Za-z]+")),
    ("urlsafe", re.compile(r"[0-9A-Za-z_-]+")),
    ("base64", re.compile(r"[0-9A-Za-z+/=]+")),
)


def key_format(value: str) -> str:
    """Shape of a credential without its content: known prefix + body length + character class.

    `sk-` followed by 48 letters and digits gives `sk-48alnum`; a JWT gives `jwt`. Two keys from the
    same issuing software share a format, which is what rules key on.
    """
    value = value.strip()
    if value.count(".") == 2 and value.startswith("eyJ"):
        return "jwt"
    prefix = next((p for p in _KEY_PREFIXES if value.startswith(p)), "")
    body = value[len(prefix):]
    cls = next((name for name, rx in _CLASSES if rx.fullmatch(body)), "mixed")
    return f"{prefix}{len(body)}{cls}"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Patterns for secrets embedded anywhere in a text field.
_API_KEY_RX = re.compile(
    r"\b(?:sk-ant-[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9_-]{20,}|cr_[0-9a-fA-F]{32,}|AIza[0-9A-Za-z_-]{30,}"
    r"|gsk_[A-Za-z0-9]{20,}|xai-[A-Za-z0-9]{20,})"
)
_BEARER_RX = re.compile(r"(?i)\b(bearer|basic|token)\s+([A-Za-z0-9._~+/=-]{8,})")
# Card numbers: 15-19 digits (spaces or dashes allowed) starting with an issuer prefix of the major
# networks (Visa 4, Mastercard 51-55/22-27, Amex 34/37, Discover 6011/64/65, JCB 35, Diners 30/36/38,
# UnionPay 62), then Luhn-checked. The prefix keeps 13-digit millisecond timestamps (1…) out.
_PAN_RX = re.compile(r"(?<![0-9])(?:4|5[1-5]|2[2-7]|3[0478]|3[56]|6[0245])(?:[ -]?[0-9]){13,17}(?![0-9])")
_EMAIL_RX = re.compile(r"\b([A-Za-z0-9._%+-]+)@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")


def _pan_sub(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    if 15 <= len(digits) <= 19 and luhn_ok(digits):
        return fingerprint(digits, "pan")
    return m.group(0)


def redact_text(text: str) -> str:
    """Replace every raw secret found in free text by its fingerprint (emails keep their domain)."""
    if not text:
        return text
    text = _BEARER_RX.sub(lambda m: f"{m.group(1)} {fingerprint(m.group(2), 'key')}", text)
    text = _API_KEY_RX.sub(lambda m: fingerprint(m.group(0), "key"), text)
    text = _EMAIL_RX.sub(lambda m: f"{fingerprint(m.group(0).lower(), 'email')}@{m.group(2).lower()}", text)
    return _PAN_RX.sub(_pan_sub, text)
