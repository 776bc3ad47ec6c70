"""Decoders: packets (blocks of them) → event frames. Pure: bytes in, events out, no I/O."""
