"""Which files are captures: decided by their magic bytes, never their names.

Kept apart from the reader (and free of numpy) so the CLI can find its inputs and start replay
workers before any heavy module is loaded (appliance/parallel.py says why that matters).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable

from appliance.errors import InputError

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),  # big-endian, nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"


def sniff_format(path: str) -> str | None:
    """'pcap', 'pcapng', 'pcap+gzip', 'pcapng+gzip' or None when the file is not a capture."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head[:2] == GZIP_MAGIC:
                fh.seek(0)
                try:
                    with gzip.open(fh) as gz:
                        inner = gz.read(4)
                except (OSError, EOFError):
                    return None
                kind = _kind(inner)
                return f"{kind}+gzip" if kind else None
            return _kind(head)
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from None


def _kind(head: bytes) -> str | None:
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_MAGIC:
        return "pcapng"
    return None


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files as given, and every capture file (by magic) below each directory, sorted."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if sniff_format(full):
                        out.append(full)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise InputError(p, "no such file or directory")
    return out
