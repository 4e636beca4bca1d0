"""The engine's instruction set: wide descriptor instructions, one per layer operation.

An instruction names an operation and carries every address pattern it needs, precomputed by the
compiler (:mod:`hw.engine.compiler`), so the sequencer only loads fields into the address
generators and the quantiser command: no multiplier sits in the control path. This module defines
the fully connected instructions; :mod:`hw.engine.conv` adds the convolution ones, and
:mod:`hw.engine.encoding` turns both into the records the program memory holds.

Operations
----------
=========  ====================================================================================
``FWD``    forward product of a layer, P = A_in·Wqᵀ (A from the activation scratchpad through the
           transposer, Wq from the weight store through the transposer) → Q_A → activations with
           their ReLU and saturation masks, back into the activation scratchpad
``LOSS``   the SSE error of a quantised output layer: D = A_out − 2^(kA−1)·onehot(label), read
           twice from the activation scratchpad → Q_E → × saturation mask → error scratchpad
``ERR``    error product of a layer, D = E·Wq (E through the transposer, Wq rows direct), two
           passes through the quantiser (pass 1 finds Q_E's max, pass 2 emits; pass 2 runs the
           product again, or with ``stored`` reads pass 1's rows back from the sum buffer) → × the producer's saturation mask
           → Q_E → × its ReLU mask → error scratchpad
``GRAD``   gradient product, G = Eᵀ·A_in (both direct), two passes as ERR → Q_G with the draw of each
           word keyed by the ``draw`` pattern (its first weight's flat index) → ΔW into the weight store (Ws ← clip(Ws − ΔW))
``END``    end of the program (one training step)
=========  ====================================================================================

Address generators
------------------
Every operand and the result path walk one pattern, ``gen_*`` below:

    for t1 < n1: for t2 < n2: for k < nk: for r < nr:
        address = base + t1·s1 + t2·s2 + k·sk + r·sr
        valid   = (sel·L + r < lim) and (k < klim)      sel = t1, t2 or 0 (``row_sel``)

An invalid address yields a zero word (the padding of edge tiles); the address itself is not read
(the pattern reader requests the top address in its place, answered without a read, and discards
it, :mod:`hw.engine.feeder`). The
operand generators run the full pattern; the result generator runs (t1, t2, r) with nk = 1, one
address per result row. A transposed operand has nr = L (L words per L reduction steps); a direct
one nr = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth.lib import data

__all__ = ["STORE_NONE", "STORE_CHIP", "STORE_EXTERNAL", "STORES", "Op", "RowSel", "AddressPattern", "Instruction", "GEN_FIELDS", "SCALAR_FIELDS", "pattern_layout",
           "IsaError"]

ADDR_BITS = 24          # word addresses in any memory
COUNT_BITS = 16         # loop counts and limits
KCOUNT_BITS = 24        # the reduction count nk (a conv gradient reduces over every position of the batch)
QCOUNT_BITS = 32        # elements per quantiser tensor


class IsaError(ValueError):
    """An instruction field does not fit its width or names a bad value; the message names it."""


def check_unsigned_fields(obj, fields, what: str) -> None:
    """Raise IsaError naming the first ``(name, width)`` field of ``obj`` that is not an integer in
    0..2^width − 1 (``what`` says which kind of object, e.g. "instruction")."""
    for name, width in fields:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < (1 << width):
            raise IsaError(f"{what} field {name}={v!r}: must be an integer in 0..{(1 << width) - 1}")


class Op:
    """Machine operations. COPY (tile staging) copies error-scratchpad words: ``aux`` walks the
    source, ``out`` the destination, one word per beat (invalid beats copy nothing). COPY_ACT does
    the same with activation words (values, masks and pool indices)."""
    NOP, FWD, LOSS, ERR, GRAD, COPY, COPY_ACT, END = 0, 1, 2, 3, 4, 8, 9, 15
    NAMES = {0: "NOP", 1: "FWD", 2: "LOSS", 3: "ERR", 4: "GRAD", 8: "COPY", 9: "COPY_ACT", 15: "END"}
    COPIES = (8, 9)                     # tile staging


class RowSel:
    NONE, T1, T2 = 0, 1, 2


#: Fields of one address pattern (widths in bits).
GEN_FIELDS: tuple[tuple[str, int], ...] = (
    ("base", ADDR_BITS), ("s1", ADDR_BITS), ("s2", ADDR_BITS), ("sk", ADDR_BITS), ("sr", ADDR_BITS),
    ("n1", COUNT_BITS), ("n2", COUNT_BITS), ("nk", KCOUNT_BITS), ("nr", COUNT_BITS),
    ("lim", COUNT_BITS), ("klim", COUNT_BITS), ("row_sel", 2),
)


@dataclass(frozen=True)
class AddressPattern:
    """One address pattern (see the module docstring). Counts are ≥ 1 for a pattern in use."""
    base: int = 0
    s1: int = 0
    s2: int = 0
    sk: int = 0
    sr: int = 0
    n1: int = 1
    n2: int = 1
    nk: int = 1
    nr: int = 1
    lim: int = (1 << COUNT_BITS) - 1
    klim: int = (1 << COUNT_BITS) - 1
    row_sel: int = RowSel.NONE

    def __post_init__(self):
        check_unsigned_fields(self, GEN_FIELDS, "address pattern")
        if self.row_sel not in (RowSel.NONE, RowSel.T1, RowSel.T2):
            raise IsaError(f"row_sel={self.row_sel}: must be 0 (none), 1 (t1) or 2 (t2)")

    @property
    def length(self) -> int:
        return self.n1 * self.n2 * self.nk * self.nr

    def address_array(self, lanes: int):
        """``(address, valid)`` as int64/bool arrays of shape (n1, n2, nk, nr), the same as
        :meth:`addresses` in row-major order."""
        import numpy as np
        t1, t2, k, r = np.ix_(*(np.arange(n, dtype=np.int64) for n in (self.n1, self.n2, self.nk, self.nr)))
        address = self.base + t1 * self.s1 + t2 * self.s2 + k * self.sk + r * self.sr
        sel = (np.zeros_like(t1), t1, t2)[self.row_sel]
        valid = (sel * lanes + r < self.lim) & (k < self.klim)
        shape = (self.n1, self.n2, self.nk, self.nr)
        return np.broadcast_to(address, shape), np.broadcast_to(valid, shape)

    def addresses(self, lanes: int):
        """Yield ``(address, valid)`` in pattern order (the reference for the RTL generator)."""
        for t1 in range(self.n1):
            for t2 in range(self.n2):
                sel = (0, t1, t2)[self.row_sel]
                for k in range(self.nk):
                    for r in range(self.nr):
                        valid = sel * lanes + r < self.lim and k < self.klim
                        yield self.base + t1 * self.s1 + t2 * self.s2 + k * self.sk + r * self.sr, valid


#: ``stored`` values: where pass 2 of an error or gradient product gets its sums.
STORE_NONE, STORE_CHIP, STORE_EXTERNAL = 0, 1, 2
STORES = {STORE_NONE: "compute-twice", STORE_CHIP: "sum buffer", STORE_EXTERNAL: "external sums"}

#: Scalar fields of an instruction, after the four patterns.
SCALAR_FIELDS: tuple[tuple[str, int], ...] = (
    ("op", 4),
    ("layer", 8),           # weight-layer index: the Threefry key word and counters
    ("relu", 1),            # Q_A applies ReLU (hidden layers)
    ("shift", 6),           # Q_A shift r_l
    ("qcount", QCOUNT_BITS),  # elements through the quantiser per pass
    ("onehot", 16),         # LOSS: 2^(kA−1), the one-hot's code
    ("stored", 2),          # ERR/GRAD: 0 compute-twice; store-then-quantise with the sums 1 on chip, 2 external
)

@dataclass(frozen=True)
class Instruction:
    """One engine instruction. ``a``/``b``: operand patterns; ``out``: result rows; ``aux``: a
    second read of the activation scratchpad in step with the result rows (ERR: the producer's
    masks; LOSS: the output activations); ``draw`` (GRAD): in step with ``out``, the flat index of
    each result word's first weight (the stochastic-rounding draw index)."""
    op: int
    layer: int = 0
    relu: int = 0
    shift: int = 0
    qcount: int = 0
    onehot: int = 0
    stored: int = 0
    a: AddressPattern = field(default_factory=AddressPattern)
    b: AddressPattern = field(default_factory=AddressPattern)
    out: AddressPattern = field(default_factory=AddressPattern)
    aux: AddressPattern = field(default_factory=AddressPattern)
    draw: AddressPattern = field(default_factory=AddressPattern)

    def __post_init__(self):
        if self.op not in Op.NAMES:
            raise IsaError(f"op={self.op!r}: not an opcode ({', '.join(f'{k}={v}' for k, v in Op.NAMES.items())})")
        check_unsigned_fields(self, SCALAR_FIELDS, "instruction")
        if self.stored not in STORES:
            raise IsaError(f"instruction stored={self.stored}: must be one of {', '.join(f'{k} ({v})' for k, v in STORES.items())}")
        if self.stored and self.op not in (Op.ERR, Op.GRAD):
            raise IsaError(f"instruction stored={self.stored} with op {Op.NAMES[self.op]}: only ERR and GRAD store their sums")

    def __str__(self) -> str:
        return f"{Op.NAMES[self.op]} layer {self.layer}"


def pattern_layout() -> data.StructLayout:
    return data.StructLayout({name: width for name, width in GEN_FIELDS})
