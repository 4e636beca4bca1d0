"""Counter-based random numbers for stochastic rounding: R = H(seed, step, layer, flat index).

H is Threefry-2x32 with 13 rounds (Salmon et al., SC'11, "Parallel random numbers: as easy as
1, 2, 3"; the Random123 library's smallest Crush-resistant variant). It uses only 32-bit
additions, rotations and XORs: no multiplier, so a hardware lane is a short pipeline of adders,
and the draw for an element never depends on the order in which elements are evaluated.

Mapping: key = (seed, layer), counter = (flat index >> 1, step); element i takes output word
i & 1, so one hash evaluation serves two neighbouring elements. The draw R is the top ``bits`` bits
of that word. Known-answer vectors from Random123's ``kat_vectors`` are in the tests.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ROUNDS", "ROTATIONS", "KEY_PARITY", "threefry2x32", "sr_draws"]

ROUNDS = 13
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
KEY_PARITY = 0x1BD11BDA


def threefry2x32(counter0, counter1, key0, key1, rounds: int = ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32-``rounds`` on uint32 arrays (broadcast); returns the two output words."""
    c0 = np.asarray(counter0, dtype=np.uint32)
    c1 = np.asarray(counter1, dtype=np.uint32)
    k0 = np.asarray(key0, dtype=np.uint32)
    k1 = np.asarray(key1, dtype=np.uint32)
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(KEY_PARITY))
    x0, x1 = (a.copy() for a in np.broadcast_arrays(c0 + ks[0], c1 + ks[1]))   # updated in place below
    tmp = np.empty_like(x1)
    for r in range(rounds):
        rot = ROTATIONS[r % 8]
        x0 += x1
        np.right_shift(x1, np.uint32(32 - rot), out=tmp)
        x1 <<= np.uint32(rot)
        x1 |= tmp
        x1 ^= x0
        if r % 4 == 3:  # key injection after every fourth round
            i = r // 4 + 1
            x0 += ks[i % 3]
            x1 += ks[(i + 1) % 3] + np.uint32(i)
    return x0, x1


def draw_lanes(bits: int) -> int:
    """Draws per hash evaluation: the 64 output bits give 4 draws of ≤ 16 bits, or 2 of ≤ 32 bits."""
    return 4 if bits <= 16 else 2


def sr_draws(seed: int, step: int, layer: int, count: int, bits: int, indices: np.ndarray | None = None) -> np.ndarray:
    """The stochastic-rounding draws R ∈ [0, 2^bits) of one weight tensor with ``count`` elements.

    ``step`` is the global training step (0-based), ``layer`` the weight-layer index. Element i uses
    the hash at counter (i // L, step), L = :func:`draw_lanes`: with L = 2 output word i % 2, with
    L = 4 the 16-bit half (i % 4) of x0‖x1 (high half of x0 first). R is the top ``bits`` bits of
    that word or half. With ``indices`` (flat, each < count) only those draws are computed.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bits={bits!r}: must be in 1..32")
    for name, v in (("seed", seed), ("step", step), ("layer", layer), ("count", count)):
        if not 0 <= int(v) < 2**32:
            raise ValueError(f"{name}={v!r}: must be in 0..2^32-1")
    lanes = draw_lanes(bits)
    width = 32 // (lanes // 2)                       # bits per lane: 32 or 16
    key = (np.uint32(seed), np.uint32(layer))
    if indices is None:
        x0, x1 = threefry2x32(np.arange(-(-count // lanes), dtype=np.uint32), np.uint32(step), *key)
        if lanes == 2:
            words = np.stack([x0, x1], axis=1).reshape(-1)[:count]
        else:
            words = np.stack([x0 >> np.uint32(16), x0 & np.uint32(0xFFFF),
                              x1 >> np.uint32(16), x1 & np.uint32(0xFFFF)], axis=1).reshape(-1)[:count]
    else:
        index = np.asarray(indices).astype(np.uint32)
        x0, x1 = threefry2x32(index // np.uint32(lanes), np.uint32(step), *key)
        sub = index % np.uint32(lanes)
        if lanes == 2:
            words = np.where(sub == 1, x1, x0)
        else:
            word = np.where(sub >= 2, x1, x0)
            words = np.where(sub % np.uint32(2) == 0, word >> np.uint32(16), word & np.uint32(0xFFFF))
    words >>= np.uint32(width - bits)
    return words
