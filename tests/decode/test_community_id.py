"""The batch Community ID (community_ids) equals the one-flow reference on random flow keys."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.decode.community_id import community_id, community_ids


def _addr(ver: int, hi: int, lo: int) -> bytes:
    return lo.to_bytes(4, "big") if ver == 4 else hi.to_bytes(8, "big") + lo.to_bytes(8, "big")


@pytest.mark.parametrize("seed", [0, 1, 443, 65535])
def test_batch_ids_equal_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    ver = rng.choice([4, 6], n).astype(np.uint8)
    proto = rng.choice([1, 6, 17, 47, 50, 58, 132], n).astype(np.uint8)  # ported and portless
    six = ver == 6
    a_hi = np.where(six, rng.integers(0, 2**63, n, dtype=np.uint64) * 2 + 1, 0).astype(np.uint64)
    b_hi = np.where(six, rng.integers(0, 2**63, n, dtype=np.uint64), 0).astype(np.uint64)
    a_lo = np.where(six, rng.integers(0, 2**63, n, dtype=np.uint64) * 2 + 1,
                    rng.integers(0, 2**32, n, dtype=np.uint64)).astype(np.uint64)
    b_lo = np.where(six, rng.integers(0, 2**63, n, dtype=np.uint64),
                    rng.integers(0, 2**32, n, dtype=np.uint64)).astype(np.uint64)
    a_port = rng.integers(0, 65536, n).astype(np.int32)
    b_port = rng.integers(0, 65536, n).astype(np.int32)
    got = community_ids(ver, proto, a_hi, a_lo, b_hi, b_lo, a_port, b_port, seed)
    for i in range(n):
        v = int(ver[i])
        want = community_id(int(proto[i]), _addr(v, int(a_hi[i]), int(a_lo[i])), _addr(v, int(b_hi[i]), int(b_lo[i])),
                            int(a_port[i]), int(b_port[i]), seed, one_way=True)
        assert got[i] == want, i


def test_spec_example() -> None:
    """The Community ID spec's first TCP baseline: 128.232.110.120:34855 -> 66.35.250.204:80."""
    a = int.from_bytes(bytes([66, 35, 250, 204]), "big")
    b = int.from_bytes(bytes([128, 232, 110, 120]), "big")
    u64 = np.uint64
    got = community_ids(np.array([4], np.uint8), np.array([6], np.uint8), np.array([0], u64), np.array([a], u64),
                        np.array([0], u64), np.array([b], u64), np.array([80], np.int32), np.array([34855], np.int32))
    assert got == ["1:LQU9qZlK+B5F3KDmev6m5PMibrg="]
    assert community_ids(*(np.zeros(0, np.uint64) for _ in range(8))) == []
