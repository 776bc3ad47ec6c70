"""DIR/summary.json: what was read, decoded, dropped and found, and how long each stage took."""

from __future__ import annotations

import json
import os
from typing import Any


def write_summary(out_dir: str, summary: dict[str, Any]) -> str:
    path = os.path.join(out_dir, "summary.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return path
