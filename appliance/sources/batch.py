"""The packet batch: what every packet source yields and every decoder consumes.

A batch is columnar: one byte buffer holding the packets back to back, and arrays of offsets,
lengths, timestamps and link types. Header decoding then works on whole arrays at once
(numpy gathers) instead of one Python object per packet, which caps a design near 70k packets/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bytes of zero padding after the last packet, so fixed-offset header gathers never read past the
# buffer; every gathered field is masked by the packet's captured length anyway.
PAD = 128


@dataclass
class PacketBatch:
    data: np.ndarray  # uint8, packets back to back, followed by PAD zero bytes
    offsets: np.ndarray  # int64, start of each packet in data
    caplen: np.ndarray  # int32, captured bytes
    wirelen: np.ndarray  # int32, original length on the wire
    ts: np.ndarray  # int64, nanoseconds since the epoch
    linktype: np.ndarray  # int32, LINKTYPE_* per packet (pcapng mixes them)
    frame: np.ndarray  # int64, 1-based packet number within its file
    file_index: np.ndarray  # int16, which input file (index into the source's file list)

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def captured_bytes(self) -> int:
        return int(self.caplen.sum())

    def packet(self, i: int) -> bytes:
        o = int(self.offsets[i])
        return self.data[o : o + int(self.caplen[i])].tobytes()

    def take(self, idx: np.ndarray) -> PacketBatch:
        """A batch of the selected packets sharing this batch's buffer (no byte copy)."""
        return PacketBatch(
            self.data,
            self.offsets[idx],
            self.caplen[idx],
            self.wirelen[idx],
            self.ts[idx],
            self.linktype[idx],
            self.frame[idx],
            self.file_index[idx],
        )

    @staticmethod
    def concat(batches: list[PacketBatch]) -> PacketBatch:
        """Join batches into one buffer (offsets shifted), keeping packet order. Only the bytes the
        packets span are copied: a batch may point into a whole memory-mapped file."""
        if len(batches) == 1:
            return batches[0]
        datas, offs, shift = [], [], 0
        for b in batches:
            if not len(b):
                continue
            lo = int(b.offsets.min())
            hi = int((b.offsets + b.caplen).max())
            datas.append(b.data[lo:hi])
            offs.append(b.offsets - lo + shift)
            shift += hi - lo
        datas.append(np.zeros(PAD, np.uint8))
        return PacketBatch(
            np.concatenate(datas),
            np.concatenate(offs) if offs else np.zeros(0, np.int64),
            np.concatenate([b.caplen for b in batches]),
            np.concatenate([b.wirelen for b in batches]),
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.linktype for b in batches]),
            np.concatenate([b.frame for b in batches]),
            np.concatenate([b.file_index for b in batches]),
        )


def empty_batch() -> PacketBatch:
    z64 = np.zeros(0, np.int64)
    z32 = np.zeros(0, np.int32)
    return PacketBatch(np.zeros(PAD, np.uint8), z64, z32, z32, z64, z32, z64, np.zeros(0, np.int16))
