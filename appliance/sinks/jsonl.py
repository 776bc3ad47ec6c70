"""alerts.jsonl and findings.jsonl: one JSON object per line, keys sorted, written atomically.

Lines go to DIR/name.tmp and the file is renamed into place on close, so a reader never sees a
half-written file and a crash leaves the previous run's file intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any


class JsonlWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = path + ".tmp"
        self.count = 0
        self.fh = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.fh.write(json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) + "\n")
            self.count += 1

    def close(self) -> str:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path
