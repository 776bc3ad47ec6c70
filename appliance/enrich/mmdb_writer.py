"""A small MaxMind DB (format 2.0) writer, so the demo GeoIP database is built from a readable CSV.

The bundled demo data (pcaps/geo/demo-geo.csv: documentation-range prefixes → ASN, org, country,
anonymity flags) must be enrichable exactly like real GeoLite2 files, through the same reader. This
module writes the three parts of the format (MaxMind DB spec v2.0, https://maxmind.github.io/MaxMind-DB/):

1. the binary search tree: one level per address bit, each node two records of `record_size` bits;
   a record < node_count is a node, == node_count is "no data", > node_count points at data
   (offset = record - node_count - 16, spec "Pointer - Search Tree Data");
2. a 16-byte zero separator then the data section (spec "Output Data Section");
3. the marker b"\\xab\\xcd\\xefMaxMind.com" and the metadata map (spec "Database Metadata").

IPv4 networks go in the ::/96 subtree of an IPv6 tree (spec "IPv4 addresses in an IPv6 tree"), so one
file answers both families. Real users never need this module: they point at their own GeoLite2 files.
"""

from __future__ import annotations

import csv
import ipaddress
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
DEMO_DATABASE_TYPE = "Appliance-Demo-ASN-Country-Anonymous-IP"

# Data section type numbers (spec "Output Data Section": pointer=1, utf8=2, double=3, bytes=4,
# uint16=5, uint32=6, map=7; extended: int32=8, uint64=9, uint128=10, array=11, boolean=14).
_UTF8, _DOUBLE, _UINT16, _UINT32, _MAP = 2, 3, 5, 6, 7
_INT32, _UINT64, _UINT128, _ARRAY, _BOOL = 8, 9, 10, 11, 14


class UInt16(int):
    """Marks an int to be encoded as uint16 (the metadata keys the spec types as uint16)."""


class UInt32(int):
    """Marks an int to be encoded as uint32 (e.g. node_count, autonomous_system_number)."""


class UInt64(int):
    """Marks an int to be encoded as uint64 (build_epoch)."""


def _control(type_num: int, size: int) -> bytes:
    """Control byte(s): 3 type bits + 5 size bits, extended type byte, then size continuation bytes."""
    if size < 29:
        size_bits, extra = size, b""
    elif size < 29 + 256:
        size_bits, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        size_bits, extra = 30, struct.pack(">H", size - 285)
    else:
        size_bits, extra = 31, struct.pack(">I", size - 65821)[1:]
    if type_num <= 7:
        return bytes([(type_num << 5) | size_bits]) + extra
    # Extended types: type bits 0, the next byte holds type - 7 (spec "Extended Type").
    return bytes([size_bits, type_num - 7]) + extra


def _uint_bytes(value: int, width: int) -> bytes:
    # Unsigned ints use the fewest bytes (size 0 means the value 0, spec "Unsigned integers").
    return value.to_bytes(width, "big").lstrip(b"\x00")


def encode(value: Any) -> bytes:
    """Encode one value in the data-section format (no pointers: the demo data is tiny)."""
    if isinstance(value, bool):
        return _control(_BOOL, int(value))  # the size field is the value (spec "boolean")
    if isinstance(value, UInt16):
        raw = _uint_bytes(value, 2)
        return _control(_UINT16, len(raw)) + raw
    if isinstance(value, UInt32):
        raw = _uint_bytes(value, 4)
        return _control(_UINT32, len(raw)) + raw
    if isinstance(value, UInt64):
        raw = _uint_bytes(value, 8)
        return _control(_UINT64, len(raw)) + raw
    if isinstance(value, int):
        if value < 0:
            return _control(_INT32, 4) + struct.pack(">i", value)
        if value < 1 << 32:
            raw = _uint_bytes(value, 4)
            return _control(_UINT32, len(raw)) + raw
        if value < 1 << 64:
            raw = _uint_bytes(value, 8)
            return _control(_UINT64, len(raw)) + raw
        raw = _uint_bytes(value, 16)
        return _control(_UINT128, len(raw)) + raw
    if isinstance(value, float):
        return _control(_DOUBLE, 8) + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(_UTF8, len(raw)) + raw
    if isinstance(value, Mapping):
        out = bytearray(_control(_MAP, len(value)))
        for key in sorted(value):
            out += encode(str(key))
            out += encode(value[key])
        return bytes(out)
    if isinstance(value, list | tuple):
        out = bytearray(_control(_ARRAY, len(value)))
        for item in value:
            out += encode(item)
        return bytes(out)
    raise TypeError(f"cannot encode {type(value).__name__} in a MaxMind DB")


class _Node:
    __slots__ = ("children", "index")

    def __init__(self) -> None:
        # A child is a _Node, a data offset (int) or None (no data).
        self.children: list[_Node | int | None] = [None, None]
        self.index = -1


def _bits(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """(address as a 128-bit int, prefix length in the IPv6 tree); IPv4 lives under ::/96."""
    if network.version == 4:
        return int(network.network_address), network.prefixlen + 96
    return int(network.network_address), network.prefixlen


def _insert(root: _Node, addr: int, plen: int, offset: int) -> None:
    node = root
    for depth in range(plen):
        bit = (addr >> (127 - depth)) & 1
        if depth == plen - 1:
            node.children[bit] = offset
            return
        child = node.children[bit]
        if not isinstance(child, _Node):
            # Pushing a shorter prefix's data down: both halves inherit it (more specific wins
            # because networks are inserted shortest prefix first).
            new = _Node()
            new.children = [child, child]
            node.children[bit] = new
            child = new
        node = child


def _number(root: _Node) -> list[_Node]:
    order: list[_Node] = []
    stack = [root]
    while stack:  # breadth-first order is not required by the spec; depth-first keeps it simple
        node = stack.pop()
        node.index = len(order)
        order.append(node)
        for child in reversed(node.children):
            if isinstance(child, _Node):
                stack.append(child)
    return order


def _pack_node(left: int, right: int, record_size: int) -> bytes:
    if record_size == 24:
        return left.to_bytes(3, "big") + right.to_bytes(3, "big")
    if record_size == 28:
        # The middle byte carries the high nibbles: left's in the top half (spec "28 bits").
        middle = ((left >> 24) & 0x0F) << 4 | ((right >> 24) & 0x0F)
        return (left & 0xFFFFFF).to_bytes(3, "big") + bytes([middle]) + (right & 0xFFFFFF).to_bytes(3, "big")
    return left.to_bytes(4, "big") + right.to_bytes(4, "big")


def write_mmdb(
    path: str | Path,
    records: Iterable[tuple[str, Mapping[str, Any]]],
    database_type: str,
    description: str = "",
    record_size: int = 28,
    build_epoch: int | None = None,
    ip_version: int = 6,
) -> int:
    """Write a MaxMind DB with one record per network; returns the node count.

    `records` yields (CIDR, record map). Overlapping networks are allowed: the more specific wins.
    With ip_version=4 only IPv4 networks are accepted and the tree is 32 levels deep.
    """
    if record_size not in (24, 28, 32):
        raise ValueError("record_size must be 24, 28 or 32 (spec 'Node Layout')")
    data = bytearray()
    offsets: dict[bytes, int] = {}
    nets: list[tuple[int, int, int]] = []
    for cidr, record in records:
        net = ipaddress.ip_network(cidr, strict=False)
        blob = encode(dict(record))
        if blob not in offsets:  # identical records are stored once, like MaxMind's own writer
            offsets[blob] = len(data)
            data += blob
        if ip_version == 4:
            if net.version != 4:
                raise ValueError(f"{cidr}: IPv6 network in an IPv4 database")
            addr, plen = int(net.network_address) << 96, net.prefixlen
        else:
            addr, plen = _bits(net)
        nets.append((plen, addr, offsets[blob]))
    root = _Node()
    for plen, addr, offset in sorted(nets):
        if plen == 0:
            raise ValueError("a /0 network cannot be stored (the root is a node)")
        _insert(root, addr, plen, offset)
    order = _number(root)
    node_count = len(order)
    limit = 1 << record_size
    tree = bytearray()
    for node in order:
        recs = []
        for child in node.children:
            if isinstance(child, _Node):
                recs.append(child.index)
            elif child is None:
                recs.append(node_count)
            else:
                recs.append(node_count + 16 + child)
        if max(recs) >= limit:
            raise ValueError(f"record_size {record_size} too small for this database")
        tree += _pack_node(recs[0], recs[1], record_size)
    metadata = {
        "binary_format_major_version": UInt16(2),
        "binary_format_minor_version": UInt16(0),
        "build_epoch": UInt64(int(time.time()) if build_epoch is None else build_epoch),
        "database_type": database_type,
        "description": {"en": description or database_type},
        "ip_version": UInt16(ip_version),
        "languages": ["en"],
        "node_count": UInt32(node_count),
        "record_size": UInt16(record_size),
    }
    out = bytes(tree) + b"\x00" * 16 + bytes(data) + METADATA_MARKER + encode(metadata)
    Path(path).write_bytes(out)
    return node_count


_TRUE = {"1", "true", "yes", "y", "t"}


def demo_records(csv_path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of the demo CSV as GeoLite2-ASN + Country + Anonymous-IP shaped records."""
    out: list[tuple[str, dict[str, Any]]] = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(line for line in fh if not line.lstrip().startswith("#"))
        for row in rows:
            rec: dict[str, Any] = {}
            if row.get("asn"):
                rec["autonomous_system_number"] = UInt32(int(row["asn"]))
            if row.get("org"):
                rec["autonomous_system_organization"] = row["org"]
            if row.get("country"):
                rec["country"] = {"iso_code": row["country"]}
            # Anonymous IP flags are present only when true (GeoIP Anonymous IP binary field docs).
            flags = {
                "hosting": "is_hosting_provider",
                "vpn": "is_anonymous_vpn",
                "proxy": "is_public_proxy",
                "tor": "is_tor_exit_node",
            }
            for col, key in flags.items():
                if (row.get(col) or "").strip().lower() in _TRUE:
                    rec[key] = True
            if any(rec.get(k) for k in ("is_anonymous_vpn", "is_public_proxy", "is_tor_exit_node")):
                rec["is_anonymous"] = True
            out.append((row["prefix"].strip(), rec))
    return out


def build_demo_db(csv_path: str | Path, out_path: str | Path) -> Path:
    """Build the combined demo database (one file: ASN + country + anonymity) from the CSV.

    build_epoch is the CSV's modification time, so rebuilding unchanged data gives the same bytes.
    """
    epoch = int(Path(csv_path).stat().st_mtime)
    write_mmdb(out_path, demo_records(csv_path), DEMO_DATABASE_TYPE,
               description="Appliance demo data: documentation ranges, not real allocations",
               build_epoch=epoch)
    return Path(out_path)


def demo_db(csv_path: str | Path, cache_dir: str | Path) -> Path:
    """The demo database built into cache_dir, rebuilt only when the CSV is newer."""
    out = Path(cache_dir) / (Path(csv_path).stem + ".mmdb")
    if not out.exists() or out.stat().st_mtime < Path(csv_path).stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".mmdb.tmp")
        build_demo_db(csv_path, tmp)
        tmp.replace(out)  # atomic: a concurrent reader never sees half a file
    return out


if __name__ == "__main__":  # python -m appliance.enrich.mmdb_writer CSV OUT
    build_demo_db(sys.argv[1], sys.argv[2])
