"""Helpers shared by the hardware tests: logged seeds and two's-complement lane packing."""

from __future__ import annotations

import os

#: Base of every test seed; override with WAGE_TEST_SEED to explore, the printed seed reproduces.
BASE_SEED = int(os.environ.get("WAGE_TEST_SEED", "20240611"))


def seed_for(tag: str) -> int:
    """A seed derived from BASE_SEED and the test's tag, printed so a failure can be replayed."""
    seed = (BASE_SEED * 1000003 + sum(ord(c) * 31 ** i for i, c in enumerate(tag))) % 2**32
    print(f"[{tag}] seed {seed} (WAGE_TEST_SEED={BASE_SEED})")
    return seed


def pack(values, width: int) -> int:
    """Lane i in bits [i·w, (i+1)·w), two's complement; values wrap (tests feed illegal codes on purpose)."""
    out = 0
    for i, v in enumerate(values):
        out |= (int(v) & ((1 << width) - 1)) << (i * width)
    return out


def unpack(flat: int, width: int, n: int) -> list[int]:
    """Inverse of :func:`pack` for signed lanes."""
    vals = []
    for i in range(n):
        v = (flat >> (i * width)) & ((1 << width) - 1)
        vals.append(v - (1 << width) if v >> (width - 1) else v)
    return vals
