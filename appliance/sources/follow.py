"""Follow growing metadata logs (`tail -F`): new complete lines → request/account event frames.

The live counterpart of reading `--requests`/`--accounts` files once: the daemon polls a Follower,
which reads the lines appended since its last position and hands them to
`appliance.sources.metadata.read_metadata` (the one parser: same formats, redaction, rejects), so
a followed log gives exactly the events a replay of the same file gives.

Rotation-aware like `tail -F`: the position is (device, inode, byte offset). When the path
points at a new inode (logrotate `create`), the old file is read to its end first, then the new
one from the start; when the file shrinks under us (`copytruncate`), reading restarts at 0. Only
complete lines are consumed, so a line being written is read on the next poll. The position is
part of the daemon's committed state, so a restart neither re-reads nor skips lines.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.sources.metadata import Kind, MetadataResult, read_metadata

MAX_READ = 16 << 20  # bytes per poll: bounds memory when a large backlog is found


@dataclass
class Position:
    dev: int = 0
    ino: int = 0
    offset: int = 0
    line: int = 0  # lines consumed before offset: reject line numbers stay those of the file

    def as_dict(self) -> dict[str, int]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "line": self.line}


class Follower:
    def __init__(self, path: str, kind: Kind, scratch_dir: str, mapping: str | None = None,
                 position: dict[str, int] | None = None) -> None:
        self.path = path
        self.kind = kind
        self.mapping = mapping
        self.pos = Position(**position) if position else Position()
        self.fh: Any = None
        self.header = b""
        self.has_header = self._has_header()
        suffix = ".csv" if self.has_header or path.lower().endswith(".csv") else ".jsonl"
        fd, self.scratch = tempfile.mkstemp(prefix=f".follow-{kind}-", suffix=suffix, dir=scratch_dir)
        os.close(fd)
        self.rotations = 0
        self.truncations = 0

    def _has_header(self) -> bool:
        if self.mapping:
            from appliance.sources.mapping import load_mapping

            m = load_mapping(self.mapping, self.kind)
            return m.format in ("csv", "delimited") and bool(m.has_header)
        return self.path.lower().endswith(".csv")

    def position(self) -> dict[str, int]:
        return self.pos.as_dict()

    def poll(self) -> MetadataResult | None:
        """Events from the complete lines appended since the last poll (None when there are none)."""
        if self.fh is None and not self._open():
            return None
        chunks = [self._read_lines()]
        st = _stat(self.path)
        if self.fh is not None and st is not None:
            rotated = (st.st_dev, st.st_ino) != (self.pos.dev, self.pos.ino)
            if rotated or st.st_size < self.pos.offset:
                # Rotated: what the old file still held was read above; go on in the new one.
                # Shrunk (copytruncate): the file was emptied and refilled, read it from the start.
                self.rotations += rotated
                self.truncations += not rotated
                self.fh.close()
                self.fh = None
                self.pos = Position()
                if self._open():
                    chunks.append(self._read_lines())
        return self._parse([c for c in chunks if c[0]])

    def _open(self) -> bool:
        try:
            self.fh = open(self.path, "rb")  # noqa: SIM115 - held across polls, closed in close()
        except OSError:
            return False
        st = os.fstat(self.fh.fileno())
        if (st.st_dev, st.st_ino) != (self.pos.dev, self.pos.ino) or st.st_size < self.pos.offset:
            self.pos = Position(st.st_dev, st.st_ino, 0, 0)  # a different file than the saved one
        if self.has_header:
            self.header = self.fh.readline()
            if not self.header.endswith(b"\n"):
                self.header = b""
            if self.pos.offset == 0 and self.header:
                self.pos.offset, self.pos.line = len(self.header), 1
        self.fh.seek(self.pos.offset)
        return True

    def _read_lines(self) -> tuple[bytes, int]:
        """(complete lines, number of the first one in the file)."""
        if self.has_header and not self.header:  # header not complete yet: nothing to read
            self.fh.close()
            self.fh = None
            return b"", 0
        self.fh.seek(self.pos.offset)
        data = self.fh.read(MAX_READ)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return b"", 0
        data = data[:end]
        first = self.pos.line + 1
        self.pos.offset += end
        self.pos.line += data.count(b"\n")
        return data, first

    def _parse(self, chunks: list[tuple[bytes, int]]) -> MetadataResult | None:
        if not chunks:
            return None
        results = [self._parse_one(data, first) for data, first in chunks]
        if len(results) == 1:
            return results[0]
        import polars as pl

        frame = pl.concat([r.frame for r in results], how="vertical_relaxed")
        counts: dict[str, Any] = {}
        for r in results:
            for k, v in r.counts.items():
                if isinstance(v, int):
                    counts[k] = counts.get(k, 0) + v
        return MetadataResult(frame, [x for r in results for x in r.rejects], counts)

    def _parse_one(self, data: bytes, first_line: int) -> MetadataResult:
        with open(self.scratch, "wb") as fh:
            if self.has_header:
                fh.write(self.header)
            fh.write(data)
        result = read_metadata([self.scratch], self.kind, self.mapping)
        shift = first_line - (2 if self.has_header else 1)
        for r in result.rejects:
            r["file"] = self.path
            r["line"] = int(r["line"]) + shift
        return result

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        Path(self.scratch).unlink(missing_ok=True)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
