"""Tiling of the three WAGE products onto an R×C output-stationary MAC array (pure Python/NumPy).

Shared by the :class:`hw.mac_array.MacArray` tests, the engine sequencer and the host drivers, so
the tile order, the zero padding and the timing model are defined here once.

Products (spec §8.2, ``golden/model.py``), each a matrix product ``out = a @ b`` with
``a`` (M, K) streamed from the left and ``b`` (K, N) from the top:

============  ===================  ======================  =====================  ==========
product       golden tensor        ``a`` (M, K)            ``b`` (K, N)           array mode
============  ===================  ======================  =====================  ==========
forward       P = A_in·Wqᵀ         A_in rows / im2col      Wqᵀ                    ternary
error         D = E·Wq             E rows (B[·Ho·Wo], O)   Wq (O, fan-in)         ternary
gradient      G = Eᵀ·A_in          Eᵀ (O, B[·Ho·Wo])       A_in rows / im2col     int8
============  ===================  ======================  =====================  ==========

For a convolution the rows of ``a`` are output positions (``golden.ops.im2col`` order
(b, y, x), columns (c, i, j)); the error product yields im2col-shaped sums that
``golden.ops.col2im`` scatter-adds into the layer's input shape (outside the array).

Tile order
----------
Output tiles run row-major over the (⌈M/R⌉, ⌈N/C⌉) grid; each output tile's reduction is split into
chunks of at most ``k_chunk`` beats (default: all of K in one tile), chunks innermost. A tile is a
stream of ``k`` beats; beat ``j`` carries the column ``a[row0:row0+R, k0+j]`` (R lanes) and the row
``b[k0+j, col0:col0+C]`` (C lanes), zero-padded to full width at the right/bottom edge (a zero lane
adds 0 to every sum, so padding never changes a result), ``last`` set on the final beat. The array
returns R rows of C sums per tile; :func:`assemble` crops the padding and adds the K chunks.
A product with K = 0 is one all-zero beat per output tile.

Timing model (:class:`ArrayTiming`)
-----------------------------------
Defined here so software can plan without importing Amaranth; ``hw.mac_array`` takes its latencies
from it and the simulation tests check the hardware against it cycle for cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from golden.config import LayerSpec, WageConfig
from golden.ops import col2im, im2col

__all__ = [
    "MODES", "PRODUCTS", "ArrayTiming", "TileSpec", "Tile", "Product",
    "check_geometry", "plan_tiles", "tiles", "assemble", "tile_product",
    "forward_product", "error_product", "gradient_product", "layer_products",
    "max_reductions", "accumulator_bits", "operand_width", "estimate_cycles", "product_cycles",
]

MODES = ("int8", "ternary")
PRODUCTS = ("forward", "error", "gradient")

#: Pipeline of one int8 processing element after its operand registers: MULT18X18D input,
#: pipeline and output registers (3) plus one fabric register (1). Ternary elements add/subtract
#: straight into the accumulator (0).
PRODUCT_LATENCY = {"int8": 4, "ternary": 0}


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be a positive integer")
    if value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return value


def check_geometry(rows, cols, mode="int8") -> None:
    """Validate an array geometry; errors name the parameter and the value."""
    _positive_int("rows", rows)
    _positive_int("cols", cols)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {', '.join(repr(m) for m in MODES)}")


# ---------------------------------------------------------------------------------------------
# Widths
# ---------------------------------------------------------------------------------------------

def operand_width(config: WageConfig) -> int:
    """Default signed operand width: max(kA, kE, kW) (8 for 2-8-8-8; kW only matters when kW > 2)."""
    return max(config.kA, config.kE, config.kW)


def accumulator_bits(a_width: int, b_width: int, max_reduction: int) -> int:
    """Signed accumulator bits that make overflow impossible for K ≤ ``max_reduction``.

    ``bits = bit_length(max|a|·max|b|·max_reduction) + 1`` with the symmetric code ranges WAGE uses
    (spec §8.1/§8.3: saturation is always ±(2^(k−1)−1), −2^(k−1) is never emitted): max|a| =
    2^(a_width−1)−1, max|b| = 2^(b_width−1)−1 (1 for a 2-bit ternary lane). The array flags the one
    code outside that range (``operand_error``), so an overflow can never pass unnoticed.
    """
    bound = ((1 << (a_width - 1)) - 1) * ((1 << (b_width - 1)) - 1) * max_reduction
    return bound.bit_length() + 1


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArrayTiming:
    """Cycle model of a ``rows``×``cols`` :class:`~hw.mac_array.MacArray` in ``mode``.

    Cycle 0 is the cycle in which the array accepts a tile's ``last`` beat (in
    :meth:`last_beat_cycles`: the first cycle after reset).

    * ``startup_cycles`` = 2 — no beat is accepted in the first two cycles after reset (the mesh
      takes its reset through a registered tree).

    * ``product_latency`` — 4 (int8: DSP input, pipeline, output register + fabric register) or 0.
    * ``drain_stages`` — registered stages that gather the finished rows into one stream: the first
      merges groups of 4 rows, each further one up to 4 groups (1 for R ≤ 4, 2 for R ≤ 16, 3 for
      R ≤ 64, …).
    * ``result_latency`` — first result row of that tile is valid in cycle ``cols + 6 +
      product_latency + drain_stages``; rows follow one per cycle while the consumer is ready.
    * The cycle after a ``last`` beat is accepted takes no beat (the elements move the finished sums
      into their shadow registers then), so a K-beat tile takes at least K + 1 cycles.
    * ``min_last_interval`` = max(rows, cols, 2) — two ``last`` beats are accepted at least this many
      cycles apart (one result row leaves per cycle; the result shadow registers are single).
    * ``result_buffer_rows`` = 4·rows — result FIFO (block RAM); a ``last`` beat is accepted only when
      R FIFO rows were unreserved in the previous cycle (the admission test is registered, and a
      taken row returns its credit one cycle later), so with an always-ready consumer tile n waits
      until tile n−4 has fully left, plus two cycles.
    """
    rows: int
    cols: int
    mode: str = "int8"

    #: Result FIFO depth in tiles (``result_buffer_rows`` = this × rows).
    BUFFER_TILES = 4

    def __post_init__(self):
        check_geometry(self.rows, self.cols, self.mode)

    @property
    def product_latency(self) -> int:
        return PRODUCT_LATENCY[self.mode]

    @property
    def startup_cycles(self) -> int:
        """Cycles after reset before the first beat is accepted (the mesh's reset tree)."""
        return 2

    @property
    def drain_stages(self) -> int:
        groups, stages = -(-self.rows // 4), 1
        while groups > 1:
            groups, stages = -(-groups // 4), stages + 1
        return stages

    @property
    def result_latency(self) -> int:
        return self.cols + 6 + self.product_latency + self.drain_stages

    @property
    def min_last_interval(self) -> int:
        return max(self.rows, self.cols, 2)

    @property
    def result_buffer_rows(self) -> int:
        return self.BUFFER_TILES * self.rows

    def last_beat_cycles(self, ks: Iterable[int]) -> list[int]:
        """Cycles at which each tile's ``last`` beat is accepted, beats offered back to back from
        cycle 0 (one per cycle, never invalid) and results always taken (an exact model)."""
        lat, gap, r, d = self.result_latency, self.min_last_interval, self.rows, self.BUFFER_TILES
        out: list[int] = []
        for n, k in enumerate(ks):
            k = max(int(k), 1)
            # beats stream through from startup_cycles on, one bubble after each last beat
            t = (out[-1] + 1 if out else self.startup_cycles - 1) + k
            if out:
                t = max(t, out[-1] + gap)
            if n >= d:                        # d·R buffer rows: tile n−d must have left completely
                t = max(t, out[n - d] + lat + r + 2)
            out.append(t)
        return out

    def cycles(self, ks: Iterable[int]) -> int:
        """Total cycles from the first beat offered to the last result row taken (inclusive)."""
        lasts = self.last_beat_cycles(ks)
        if not lasts:
            return 0
        return lasts[-1] + self.result_latency + self.rows


# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileSpec:
    """Geometry of one tile: output origin (row0, col0), valid extent (m, n) ≤ (R, C), and the
    reduction slice k0 … k0+k−1 (k ≥ 1 beats; ``k_valid`` = 0 marks the single zero beat of K = 0)."""
    index: int
    row0: int
    col0: int
    k0: int
    m: int
    n: int
    k: int
    k_valid: int


@dataclass(frozen=True)
class Tile:
    """A :class:`TileSpec` with its operand beats: ``a`` (k, R) and ``b`` (k, C), int64, zero-padded.
    Beat j is (a[j], b[j], last = j == k−1)."""
    spec: TileSpec
    a: np.ndarray
    b: np.ndarray

    @property
    def k(self) -> int:
        return self.spec.k

    def beats(self) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        for j in range(self.spec.k):
            yield self.a[j], self.b[j], j == self.spec.k - 1


def plan_tiles(m: int, n: int, k: int, rows: int, cols: int, k_chunk: int | None = None) -> list[TileSpec]:
    """Tile geometry for an (m, k)·(k, n) product on a rows×cols array, in stream order."""
    check_geometry(rows, cols)
    for name, v in (("m", m), ("n", n), ("k", k)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r}: must be a non-negative integer")
    if k_chunk is not None:
        _positive_int("k_chunk", k_chunk)
    chunk = k if k_chunk is None else k_chunk
    k_starts = list(range(0, k, chunk)) if k > 0 else [0]
    specs = []
    for row0 in range(0, m, rows):
        for col0 in range(0, n, cols):
            for k0 in k_starts:
                kv = min(chunk, k - k0) if k > 0 else 0
                specs.append(TileSpec(len(specs), row0, col0, k0, min(rows, m - row0), min(cols, n - col0),
                                      max(kv, 1), kv))
    return specs


def _as_int(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {x.shape}")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or not np.array_equal(x, np.rint(x)):
            raise ValueError(f"{name} must hold integers")
    elif x.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    return x.astype(np.int64)


def tiles(a: np.ndarray, b: np.ndarray, rows: int, cols: int, k_chunk: int | None = None) -> Iterator[Tile]:
    """The operand beats of ``a @ b`` for a rows×cols array, tile by tile in stream order."""
    a, b = _as_int(a, "a"), _as_int(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"product shapes {a.shape} and {b.shape} do not match")
    m, k = a.shape
    n = b.shape[1]
    for s in plan_tiles(m, n, k, rows, cols, k_chunk):
        ta = np.zeros((s.k, rows), dtype=np.int64)
        tb = np.zeros((s.k, cols), dtype=np.int64)
        if s.k_valid:
            ta[:, :s.m] = a[s.row0:s.row0 + s.m, s.k0:s.k0 + s.k_valid].T
            tb[:, :s.n] = b[s.k0:s.k0 + s.k_valid, s.col0:s.col0 + s.n]
        yield Tile(s, ta, tb)


def assemble(results: Iterable[tuple[TileSpec, np.ndarray]], m: int, n: int) -> np.ndarray:
    """Reassemble tile results ((R, C) sums per :class:`TileSpec`) into the (m, n) int64 product:
    crop the zero padding and add the K chunks. Every output element must be covered."""
    out = np.zeros((m, n), dtype=np.int64)
    covered = np.zeros((m, n), dtype=bool)
    for spec, res in results:
        res = np.asarray(res, dtype=np.int64)
        if res.ndim != 2 or res.shape[0] < spec.m or res.shape[1] < spec.n:
            raise ValueError(f"tile {spec.index}: result shape {res.shape} is smaller than its extent "
                             f"({spec.m}, {spec.n})")
        out[spec.row0:spec.row0 + spec.m, spec.col0:spec.col0 + spec.n] += res[:spec.m, :spec.n]
        covered[spec.row0:spec.row0 + spec.m, spec.col0:spec.col0 + spec.n] = True
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} output elements are covered by no tile")
    return out


def run_tile(tile: Tile) -> np.ndarray:
    """What the array returns for one tile: the (R, C) sums Σ_j a[j] ⊗ b[j] over its beats, in
    int64 (exact integers, so the order of the additions does not matter)."""
    return tile.a.T @ tile.b


def tile_product(a: np.ndarray, b: np.ndarray, rows: int, cols: int, k_chunk: int | None = None) -> np.ndarray:
    """NumPy reference of the tiled product: the exact tile stream and order of :func:`tiles`,
    each tile accumulated beat by beat as the array does, reassembled by :func:`assemble`."""
    a, b = _as_int(a, "a"), _as_int(b, "b")
    results = [(t.spec, run_tile(t)) for t in tiles(a, b, rows, cols, k_chunk)]
    return assemble(results, a.shape[0], b.shape[1])


# ---------------------------------------------------------------------------------------------
# The three WAGE products
# ---------------------------------------------------------------------------------------------

@dataclass
class Product:
    """One WAGE product as a matrix product ``a @ b`` plus ``finish``, which turns the (M, N)
    result into the golden tensor (reshape, transpose, col2im)."""
    name: str
    a: np.ndarray
    b: np.ndarray
    mode: str
    finish: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(M, N, K)."""
        return self.a.shape[0], self.b.shape[1], self.a.shape[1]

    def reference(self) -> np.ndarray:
        """The golden tensor via exact int64 matmul."""
        return self.finish(self.a @ self.b)

    def tiled(self, rows: int, cols: int, k_chunk: int | None = None) -> np.ndarray:
        """The golden tensor via :func:`tile_product`."""
        return self.finish(tile_product(self.a, self.b, rows, cols, k_chunk))


def _i64(x) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def forward_product(layer: LayerSpec, a_in: np.ndarray, wq: np.ndarray) -> Product:
    """P = A_in ∗ Wq (X·Tᵀ): rows of ``a`` are samples (fc) or output positions (conv, im2col)."""
    a_in, wq = _i64(a_in), _i64(wq)
    b = a_in.shape[0]
    o = layer.out_channels
    if layer.kind == "fc":
        return Product("forward", a_in.reshape(b, -1), wq.T, "ternary", lambda p: p)
    _, ho, wo = layer.product_shape
    cols = im2col(a_in, layer.kernel, layer.padding)
    return Product("forward", cols, wq.reshape(o, -1).T, "ternary",
                   lambda p: p.reshape(b, ho, wo, o).transpose(0, 3, 1, 2))


def error_product(layer: LayerSpec, e: np.ndarray, wq: np.ndarray, in_shape: tuple[int, ...]) -> Product:
    """D = E ∗ Wq: the error sums at the layer's input (``in_shape`` per sample, the previous layer's
    out_shape). For conv the array computes im2col-shaped sums and ``finish`` applies col2im."""
    e, wq = _i64(e), _i64(wq)
    b = e.shape[0]
    o = layer.out_channels
    if layer.kind == "fc":
        return Product("error", e.reshape(b, o), wq, "ternary", lambda d: d.reshape((b, *in_shape)))
    e_rows = e.transpose(0, 2, 3, 1).reshape(-1, o)
    return Product("error", e_rows, wq.reshape(o, -1), "ternary",
                   lambda d: col2im(d, (b, *in_shape), layer.kernel, layer.padding))


def gradient_product(layer: LayerSpec, e: np.ndarray, a_in: np.ndarray) -> Product:
    """G = Eᵀ ∗ A_in, shaped like the weights; the reduction runs over samples (and positions)."""
    e, a_in = _i64(e), _i64(a_in)
    b = e.shape[0]
    o = layer.out_channels
    if layer.kind == "fc":
        return Product("gradient", e.reshape(b, o).T, a_in.reshape(b, -1), "int8", lambda g: g)
    e_t = e.transpose(1, 0, 2, 3).reshape(o, -1)
    cols = im2col(a_in, layer.kernel, layer.padding)
    return Product("gradient", e_t, cols, "int8", lambda g: g.reshape(layer.weight_shape))


def layer_products(config: WageConfig, layer: LayerSpec, a_in, wq, e, d_shape=None) -> dict[str, Product]:
    """The three products of one layer (error only for layers > 0, whose input has a producer)."""
    out = {"forward": forward_product(layer, a_in, wq), "gradient": gradient_product(layer, e, a_in)}
    if layer.index > 0:
        in_shape = d_shape or config.layers[layer.index - 1].out_shape
        out["error"] = error_product(layer, e, wq, in_shape)
    return out


def max_reductions(config: WageConfig, batch_size: int | None = None) -> dict[str, int]:
    """Largest K each product needs over the network (the ``max_reduction`` to build arrays with).

    forward: fan-in; error: O of the layer whose error is propagated (layers > 0; conv col2im adds
    happen outside the array); gradient: B·Ho·Wo (conv) or B (fc).
    """
    b = config.batch_size if batch_size is None else batch_size
    fwd = max(l.fan_in for l in config.layers)
    err = max((l.out_channels for l in config.layers[1:]), default=1)
    grad = max(b * l.out_positions for l in config.layers)
    return {"forward": fwd, "error": err, "gradient": grad}


# ---------------------------------------------------------------------------------------------
# Cycle estimates
# ---------------------------------------------------------------------------------------------

def estimate_cycles(m: int, n: int, k: int, rows: int, cols: int, mode: str = "int8",
                    k_chunk: int | None = None) -> int:
    """Cycles for an (m, k)·(k, n) product on a rows×cols array with operands always available
    and results always taken (exact under :class:`ArrayTiming`)."""
    timing = ArrayTiming(rows, cols, mode)
    return timing.cycles(s.k for s in plan_tiles(m, n, k, rows, cols, k_chunk))


def product_cycles(product: Product, rows: int, cols: int, mode: str | None = None,
                   k_chunk: int | None = None) -> int:
    """:func:`estimate_cycles` for a :class:`Product` (its own mode unless given)."""
    m, n, k = product.shape
    return estimate_cycles(m, n, k, rows, cols, mode or product.mode, k_chunk)
