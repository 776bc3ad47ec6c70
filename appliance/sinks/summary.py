"""DIR/summary.json: what was read, decoded, dropped and found, and how long each stage took."""

from __future__ import annotations

import os
from typing import Any

from appliance.atomic import write_json


def write_summary(out_dir: str, summary: dict[str, Any]) -> str:
    path = os.path.join(out_dir, "summary.json")
    write_json(path, summary, indent=2)
    return path
