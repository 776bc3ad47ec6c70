"""The two non-event outcomes of a decoder: "need more data" and a named malformed-input anomaly.

A Malformed carries a short reason in Zeek `weird` style (e.g. `truncated_IP`, `TLS_record_len_lies`);
the pipeline counts it by reason in summary.json and skips the packet, never crashes.
"""

from __future__ import annotations


class NeedMore(Exception):
    """The bytes so far are a valid prefix; call again with more of the stream."""


class Malformed(Exception):
    """The bytes cannot be what they claim to be. `reason` is a stable counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
