"""Crash-safe file writes: write a temporary file, fsync it, rename it into place (POSIX rename is
atomic), so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from typing import Any

import polars as pl


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, obj: Any, indent: int | None = None) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, sort_keys=True, indent=indent, default=str)
        if indent is not None:
            fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_parquet(frame: pl.DataFrame, path: str) -> None:
    tmp = path + ".tmp"
    frame.write_parquet(tmp, compression="zstd", statistics=True)
    fsync_path(tmp)
    os.replace(tmp, path)
