"""Convolution and 2×2 max-pool on the engine: the odometer address pattern, compiler and word-level model.

The Python level of the engine's convolution path; the RTL walks the same patterns
(:mod:`hw.engine.conv_addrgen`, :mod:`hw.engine.slot`) and has the same pool and unpool stages
(:mod:`hw.engine.pool`, :mod:`hw.engine.unpool`). Fully connected layers keep the
:class:`~hw.engine.isa.AddressPattern` path of :mod:`hw.engine.compiler` unchanged; convolution
layers (stride 1, "valid" or "same" padding, optional 2×2 max-pool) get :class:`ConvPattern`, a
generalisation whose position and tap loops are digit *odometers*, and :class:`ConvInstruction`.

The pattern
-----------
A :class:`ConvPattern` runs the same four loops as an ``AddressPattern``::

    for t1 < n1: for t2 < n2: for k < nk: for r < nr:  one (address, valid) per beat

and adds two odometers, ``pos`` (a position, e.g. digits (b, y, x) or, window-major, (b, y2, x2,
dy, dx)) and ``tap`` (a reduction tap, e.g. (i, j, cb)). Each odometer has digits (most
significant first) with a radix, an address stride and three *coordinate* strides; its linear
index is chosen by ``*_drive``:

==========  =========================================  =======================================
drive       linear index                                incremental form
==========  =========================================  =======================================
``NONE``    0 (the odometer has no digits)              —
``T1R``     t1·nr + r                                   steps after every beat; its state is
                                                        saved at each t1 start and restored at
                                                        every other (t2, k) start
``K``       k                                           steps after the last r of each k; reset
                                                        at every (t1, t2) start
``T2``      t2                                          steps after the last (k, r) of each t2;
                                                        reset at every t1 start
==========  =========================================  =======================================

From the digit values d_m::

    address = base + s1·t1 + s2·t2 + Σ_pos d_m·addr_m + Σ_tap d_m·addr_m
    coord_c = coord_base_c + Σ_pos d_m·coord_m[c] + Σ_tap d_m·coord_m[c]      (c = 0, 1, 2)
    valid   = 0 ≤ coord_c < coord_lim_c for c = 0, 1, 2

An invalid beat reads a zero word (or, for a result pattern, writes nothing). The coordinates are
what the bounds checks need: an input row and column (padding: below 0 or beyond the map), a
sample (the tail tile beyond the batch), an output channel (rows beyond O). An unused coordinate
has stride 0, base 0 and limit 1.

Incremental hardware form (no multiplier, no divider): each odometer is a register per digit
(a counter modulo its radix), an address accumulator and three coordinate accumulators, plus one
shadow copy of all of them (the T1R save/restore). A step finds the lowest digit that does not wrap
(every digit below it is at radix − 1: a chain of equality compares), clears the digits below it,
increments it, and adds that digit's *carry strides* to the accumulators::

    carry_addr_m  = addr_m  − Σ_{digits e below m} (radix_e − 1)·addr_e
    carry_coord_m = coord_m − Σ_{digits e below m} (radix_e − 1)·coord_e

which the compiler precomputes (:meth:`ConvPattern.carry_strides`), so the generator holds one
adder per accumulator and a small mux of constants. ``s1·t1`` and ``s2·t2`` are accumulators as in
the existing generator. The address is then two additions (base + loop part + pos + tap) and each
coordinate check one *unsigned* compare ``coord < lim`` of the two's-complement sum (a negative
coordinate is a huge unsigned number, so one comparator covers both bounds). The address adders are
ADDR_BITS wide and wrap (a padding tap may point below the tensor, to 2^24 − k). Only a valid
beat's address — always inside the memory — is read; an invalid beat requests the top address
instead, answered without a read (or a plain RAM's wrapped word), and the data is discarded (:class:`hw.engine.feeder.PatternReader`), so padding never reaches
the external-memory port.
:meth:`ConvPattern.addresses` is this incremental form in Python and is tested against the
closed form :meth:`ConvPattern.address_array` for every compiled pattern.

Instructions
------------
:class:`ConvInstruction` ops (numbers distinct from :class:`~hw.engine.isa.Op`; the machine encoding,
:mod:`hw.engine.encoding`, runs them as FWD, ERR and GRAD with convolution patterns and the pool
and unpool stages):

``CONV_FWD``  P = conv(X, Wq): ``a`` = X through the transposer (rows = L output positions,
              k = (i, j, cb) taps), ``b`` = weight rows through the transposer (a plain
              AddressPattern, as fc). With ``pool`` the rows are window-major (b, y2, x2, dy, dx):
              the result path takes each group of 4 rows, keeps the lane-wise maximum and its
              2-bit index (first maximum in row-major window order), and ``out`` names one pooled
              position per 4 rows (nr = L/4). Then Q_A; activation, ReLU/saturation masks and pool
              index are written.
``CONV_ERR``  D at layer l's input: rows = L input positions, cols = an input-channel block cb,
              k = (i, j, ob) with the o-lane as the transposed beat: ``a`` = E_l at
              (b, y − i + pad, x − j + pad, ob) (the flip), ``b`` = weight word (o, (i, j, cb)) direct,
              one per beat (o = ob·L + lane, invalid for o ≥ O). Two passes (Q_E's max first; ``stored``: pass 2 from the sum buffer) →
              × saturation mask (``aux`` = A_{l−1}'s masks) → Q_E → × ReLU mask → if ``unpool_dx``
              is non-zero, the unpool stage: ``out`` names the window's first product-resolution
              word; the stage writes the four words ``out``, ``out + dx``, ``out + dy``,
              ``out + dy + dx``, each lane's value going to the word its pool index names (zero in
              the other three). Also used, with plain ``a``/``b``, for a fully connected layer after a
              pooled convolution.
``CONV_GRAD`` G: rows = L output channels (block t1), cols = the lanes of weight word t2 = (i, j, cb),
              k = every product position p: ``a`` = E_l word (p, ob) direct, ``b`` = X word at
              (b, y + i − pad, x + j − pad, cb) direct (zero outside the input). Two passes as CONV_ERR → Q_G; the
              draw of lane j of a result word is ``draw + j`` (``draw`` is a pattern in step with
              ``out``: the channels-last flat index of the word's first weight) → ΔW into the weight
              store.

A CONV_ERR whose sums are stored (``stored``) may run in *parts* (:func:`compile_conv_err_bands`):
its rows are split into groups of g input columns and, in each, into bands of input rows y whose
valid kernel rows i (those with y + pad − i inside the product map) are the same range; each part
walks only its band's kernel rows and the kernel columns valid for some column of its group, so a
valid convolution's error product multiplies few padding taps (LeNet-5's conv2: 44 % of the taps
are valid, 67 % of the row-banded ones, 91 % with groups of 2 columns). Rows run in (group, y, b, x)
order. The compiler takes the smallest groups whose records the program memory holds
(:func:`err_column_group_sizes`; whole rows need 9 parts for LeNet-5's conv2, groups of 2
columns 54, of 1 column 108: as delta records, :mod:`hw.engine.encoding`, those fit in 16,384
program words with room to spare). The records are one
quantiser tensor: ``part`` = :data:`PART_FIRST` starts pass 1 for ``qcount`` elements (the whole
tensor), :data:`PART_NEXT` parts continue it, each ending when its ``part_count`` elements have
entered the quantiser, and the :data:`PART_FINISH` record (no product) runs pass 2 from the stored
sums with the whole tensor's ``aux`` and ``out`` patterns. The sequencer refuses parts out of this
order (BAD_INSTRUCTION) and, if a RUN stops inside an open product, completes its quantiser
command with zero rows first.

A CONV_GRAD that stores its sums and whose error operand E_l is spilled may be *staged*
(:func:`compile_conv_grad_staged`): the whole product reads every E_l word once per weight word,
through the port when E_l is external. Staged, it runs in parts, one per output-channel block ob
(its t1), each after an isa COPY record that copies E_l's block-ob words (one per product
position) into free error-scratchpad words; the part's ``a`` reads them there. The first part
carries the draw pattern (the quantiser's draw prefetch starts with pass 1), the finish record the
``out`` pattern. The compiler stages when the error scratchpad's free words hold a block and the
program memory the extra records, and :func:`hw.engine.compiler.choose_placement` weighs it
against keeping part of a tensor on chip instead.

A stored CONV_GRAD whose input map X is spilled may run in *batch bands* with *accumulated sums*
(:func:`compile_conv_grad_bands`): neither operand need fit on chip whole. Before each band a COPY
stages the band's E_l words and a COPY_ACT its X words in words the step no longer needs; then one
part runs every output-channel block and weight word over the band's positions only. Its sum over
those positions is a partial sum, so the parts accumulate: the first band's part stores its rows
with ``sum_hold`` (they do not enter the quantiser: a partial sum must not reach Q_G's maximum);
each later part has ``sum_add`` (the sequencer reads the stored rows from row 0, ahead of the
array, adds each to the array's row, lane-wise at the accumulator width, and stores the sum back
in its place) and ``sum_hold`` but the last, whose finished sums enter pass 1. The finish record
quantises from the stored sums as for any product in parts. Integer addition is associative, so
the sums, the maximum and every draw are the whole product's. The whole product reads X once per
weight word and output block; banded, X and E_l go through the port once each, and the external
sums once per band each way (LeNet-5's conv2 at batch 128: A0's 6.55 million words become
73,728). While an adding part runs, the external sums' reader shares the error reader's port
client (:class:`~hw.engine.extport.SharedReadClient`), so the part's ``a`` may read external words
as well; the compiler stages it, which leaves the port to the sums. The compiler bands a product
where its port-bound estimate, sum traffic included, is lower than the product's other forms.

A stored CONV_ERR in parts whose operand E_l is spilled may be staged as well
(:func:`compile_conv_err_bands` with ``stage``): in batch bands, each after a COPY of the band's
E_l words (images are the map's outermost dimension) into error-scratchpad words the step no
longer needs, the band's parts reading them there; the rows then run in (band, group, y, b, x)
order, which the finish record walks. The bands multiply the parts' records, so in the same
program memory staging comes with coarser parts (more array beats) and the compiler takes it when
the port-bound estimate at the memory's rate (``EngineConfig.external_cycles_per_word``) is lower:
LeNet-5's b128 conv2 on the ULX3S's SDRAM reads E1 once (65,536 words) instead of 6.55 million
times, in 8 bands × 54 parts; with a port of a word per cycle the 108 unstaged parts win.

A CONV_FWD whose input map is spilled and read more than once per word may be staged too
(:func:`compile_conv_fwd_staged`): it runs in batch bands, each after an isa COPY_ACT record that
copies the band's input words (whole activation words) into activation-scratchpad words that no
live tensor holds — the words of activations the step has not written yet count as free — and
the band's CONV_FWD reads them there. Q_A is a fixed shift, so the bands are independent
products. It saves port words, not array beats (a band's rows are whole tiles, so small maps
even cost beats), and its records may leave room only for coarser error parts: the compiler
stages where the port-bound estimate at the memory's rate is lower (see error staging above).

The fully connected layers of such a network stage their spilled inputs too. A FWD whose input X
spills runs in batch bands (:func:`compile_fc_fwd_staged`): a COPY_ACT of the band's input words,
then a FWD over the band's images. As for a convolution the input batch and A_0 … A_(i−1) are
live; A_i, the product's output, is live only where the bands before have written it, so a band
may stage in the words of A_i's later images (LeNet-5's fc1 at batch 128, A2 on chip: bands of
40, 24, 16, 16, 8 and 8 images, the last 16 images read where they live). A stored GRAD whose
input X spills runs in column blocks (:func:`compile_fc_grad_staged`): its tiles run input word
first, so each block of input words (a COPY_ACT of those words of every image, then one part) has
a contiguous run of the product's rows, whole sums, and the finish record and the draws walk the
whole product's order. The whole products read X once per output block; staged, once. Each product
stages only where its own port-bound estimate is lower (at a word per cycle a copy costs as much
as the reads it saves unless X is read more often than the array's beats need).

Pool and unpool are stages of the FWD and ERR result paths (no separate memory pass, no stored
product tensor). A step's program (:func:`compile_conv_network`)::

    FWD 0 … FWD n−1, LOSS, then for l = n−1 … 0: ERR l (l > 0), GRAD l; END

with isa :class:`~hw.engine.isa.Instruction` for fully connected layers and ConvInstruction for
convolution layers (and for the ERR of a fully connected layer that must unpool).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from golden.config import WageConfig
from golden.prng import sr_draws
from golden.quant import forward_weights, quantize_activation, quantize_error, quantize_gradient

from .compiler import (Program, UnsupportedNetwork, check_loss_and_labels, check_program_fits,
                       choose_placement, choose_store_then_quantise, fc_draw, fc_error, fc_forward, fc_gradient,
                       loss, port_bound_cycles)
from .config import EngineConfig
from .isa import (ADDR_BITS, COUNT_BITS, KCOUNT_BITS, STORES, AddressPattern, Instruction, IsaError, Op, QCOUNT_BITS, RowSel,
                  check_unsigned_fields)
from .layout import MapLayout, WeightLayout
from .model import EngineModel, ModelError

__all__ = ["PART_WHOLE", "PART_FIRST", "PART_NEXT", "PART_FINISH", "compile_conv_err_bands", "err_column_group_sizes", "compile_fc_fwd_staged", "compile_fc_grad_staged", "Drive", "ConvOp", "ConvPattern", "ConvInstruction", "compile_conv_network", "compile_conv_fwd",
           "compile_conv_err", "compile_conv_grad", "compile_fc_err_unpool", "ConvEngineModel", "MAX_DIGITS"]

MAX_DIGITS = 6                     # digits per odometer
COORDS = 3                         # bounds-checked coordinates
COORD_BITS = 16                    # coordinate accumulators (signed) and limits
_NO_LIMIT = 1                      # an unused coordinate: stride 0, base 0, limit 1


class Drive:
    """What drives an odometer's linear index (see the module docstring)."""
    NONE, T1R, K, T2 = 0, 1, 2, 3
    NAMES = {0: "NONE", 1: "T1R", 2: "K", 3: "T2"}


#: ``ConvInstruction.part``: a CONV_ERR whose product runs in parts (row bands, each with only the
#: taps valid in it), one quantiser tensor: the first part starts Q_E's pass 1 (``qcount`` = the
#: whole tensor), the next parts continue it, the finish record runs pass 2 from the stored sums.
PART_WHOLE, PART_FIRST, PART_NEXT, PART_FINISH = 0, 1, 2, 3


class ConvOp:
    """ConvInstruction operations (numbers not used by :class:`~hw.engine.isa.Op`)."""
    CONV_FWD, CONV_ERR, CONV_GRAD = 5, 6, 7
    NAMES = {5: "CONV_FWD", 6: "CONV_ERR", 7: "CONV_GRAD"}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _signed(name: str, v, bits: int) -> None:
    if not _is_int(v) or not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
        raise IsaError(f"conv pattern field {name}={v!r}: must be an integer in "
                       f"{-(1 << (bits - 1))}..{(1 << (bits - 1)) - 1}")


def _count(name: str, v, low: int = 1, bits: int = COUNT_BITS) -> None:
    if not _is_int(v) or not low <= v < (1 << bits):
        raise IsaError(f"conv pattern field {name}={v!r}: must be an integer in {low}..{(1 << bits) - 1}")


@dataclass(frozen=True)
class ConvPattern:
    """One odometer address pattern (see the module docstring). Digits are most significant first;
    ``*_coord`` holds one 3-tuple of coordinate strides per digit. Addresses (base and strides) are
    signed ADDR_BITS + 1 bit values (the adders wrap modulo 2^ADDR_BITS); coordinates signed
    COORD_BITS-bit; limits 1..2^COORD_BITS − 1."""
    base: int = 0
    s1: int = 0
    s2: int = 0
    n1: int = 1
    n2: int = 1
    nk: int = 1
    nr: int = 1
    pos_drive: int = Drive.NONE
    pos_radix: tuple[int, ...] = ()
    pos_addr: tuple[int, ...] = ()
    pos_coord: tuple[tuple[int, int, int], ...] = ()
    tap_drive: int = Drive.NONE
    tap_radix: tuple[int, ...] = ()
    tap_addr: tuple[int, ...] = ()
    tap_coord: tuple[tuple[int, int, int], ...] = ()
    coord_base: tuple[int, int, int] = (0, 0, 0)
    coord_lim: tuple[int, int, int] = (_NO_LIMIT, _NO_LIMIT, _NO_LIMIT)

    def __post_init__(self):
        for name in ("base", "s1", "s2"):
            _signed(name, getattr(self, name), ADDR_BITS + 1)
        for name in ("n1", "n2", "nk", "nr"):
            _count(name, getattr(self, name), bits=KCOUNT_BITS if name == "nk" else COUNT_BITS)
        for name in ("coord_base", "coord_lim"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != COORDS:
                raise IsaError(f"conv pattern field {name}={v!r}: must be a tuple of {COORDS} integers")
        for c, v in enumerate(self.coord_base):
            _signed(f"coord_base[{c}]", v, COORD_BITS)
        for c, v in enumerate(self.coord_lim):
            # one unsigned compare checks both ends only while a negative coordinate reads as
            # ≥ 2^(COORD_BITS−1): limits stop there
            if not _is_int(v) or not 1 <= v <= 1 << (COORD_BITS - 1):
                raise IsaError(f"conv pattern field coord_lim[{c}]={v!r}: must be an integer in "
                               f"1..{1 << (COORD_BITS - 1)}")
        loop_range = {Drive.T1R: self.n1 * self.nr, Drive.K: self.nk, Drive.T2: self.n2}
        for odo in ("pos", "tap"):
            drive = getattr(self, f"{odo}_drive")
            radix, addr, coord = (getattr(self, f"{odo}_{f}") for f in ("radix", "addr", "coord"))
            if drive not in Drive.NAMES:
                raise IsaError(f"conv pattern field {odo}_drive={drive!r}: must be one of "
                               f"{', '.join(f'{k} ({v})' for k, v in Drive.NAMES.items())}")
            for f, v in (("radix", radix), ("addr", addr), ("coord", coord)):
                if not isinstance(v, tuple):
                    raise IsaError(f"conv pattern field {odo}_{f}={v!r}: must be a tuple")
            if not len(radix) == len(addr) == len(coord):
                raise IsaError(f"conv pattern {odo}: {odo}_radix, {odo}_addr and {odo}_coord have "
                               f"{len(radix)}, {len(addr)} and {len(coord)} entries; one per digit expected")
            if len(radix) > MAX_DIGITS:
                raise IsaError(f"conv pattern field {odo}_radix={radix!r}: at most {MAX_DIGITS} digits")
            if (drive == Drive.NONE) != (len(radix) == 0):
                raise IsaError(f"conv pattern {odo}: {odo}_drive={Drive.NAMES.get(drive, drive)} with "
                               f"{len(radix)} digits; an odometer has digits exactly when it is driven")
            for m, v in enumerate(radix):
                _count(f"{odo}_radix[{m}]", v)
            for m, v in enumerate(addr):
                _signed(f"{odo}_addr[{m}]", v, ADDR_BITS + 1)
            for m, v in enumerate(coord):
                if not isinstance(v, tuple) or len(v) != COORDS:
                    raise IsaError(f"conv pattern field {odo}_coord[{m}]={v!r}: must be a tuple of {COORDS} integers")
                for c, s in enumerate(v):
                    _signed(f"{odo}_coord[{m}][{c}]", s, COORD_BITS)
            if drive != Drive.NONE and loop_range[drive] > math.prod(radix):
                raise IsaError(f"conv pattern field {odo}_radix={radix!r}: {odo}_drive={Drive.NAMES[drive]} "
                               f"reaches index {loop_range[drive] - 1}, the odometer counts only "
                               f"{math.prod(radix)} states (the top digit would wrap)")

    @property
    def length(self) -> int:
        return self.n1 * self.n2 * self.nk * self.nr

    # -- closed form (the reference) ---------------------------------------------------------
    def _odometer(self, index, radix, addr, coord):
        a = np.zeros_like(index)
        c = [np.zeros_like(index) for _ in range(COORDS)]
        rest = index
        for m in reversed(range(len(radix))):
            rest, d = np.divmod(rest, radix[m]) if m else (None, rest)
            a = a + d * addr[m]
            for q in range(COORDS):
                c[q] = c[q] + d * coord[m][q]
        return a, c

    def address_array(self, lanes: int):
        """``(address, valid)`` as int64/bool arrays of shape (n1, n2, nk, nr), like
        :meth:`AddressPattern.address_array` (``lanes`` is unused: rows are explicit digits here)."""
        t1, t2, k, r = np.ix_(*(np.arange(n, dtype=np.int64) for n in (self.n1, self.n2, self.nk, self.nr)))
        shape = (self.n1, self.n2, self.nk, self.nr)
        index = {Drive.NONE: np.zeros_like(t1), Drive.T1R: t1 * self.nr + r, Drive.K: k, Drive.T2: t2}
        address = self.base + t1 * self.s1 + t2 * self.s2
        coords = [np.full((1, 1, 1, 1), b, dtype=np.int64) for b in self.coord_base]
        for odo in ("pos", "tap"):
            a, c = self._odometer(index[getattr(self, f"{odo}_drive")], getattr(self, f"{odo}_radix"),
                                  getattr(self, f"{odo}_addr"), getattr(self, f"{odo}_coord"))
            address = address + a
            coords = [x + y for x, y in zip(coords, c)]
        valid = np.ones((1, 1, 1, 1), dtype=bool)
        for c, lim in zip(coords, self.coord_lim):
            valid = valid & (c >= 0) & (c < lim)
        # the hardware adders wrap; an invalid beat's address is not read (the pattern reader
        # requests 2^24 - 1 instead, answered without a read), so a wrapped one never reaches the memories
        address = address % (1 << ADDR_BITS)
        return np.broadcast_to(address, shape), np.broadcast_to(valid, shape)

    # -- incremental form (the RTL's algorithm) -----------------------------------------------
    def carry_strides(self, odo: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """Per digit of odometer ``odo`` ("pos" or "tap"): (carry address stride, carry coordinate
        strides), the constants added when that digit increments and every digit below it wraps."""
        radix, addr, coord = (getattr(self, f"{odo}_{f}") for f in ("radix", "addr", "coord"))
        out = []
        for m in range(len(radix)):
            below = range(m + 1, len(radix))
            ca = addr[m] - sum((radix[e] - 1) * addr[e] for e in below)
            cc = tuple(coord[m][q] - sum((radix[e] - 1) * coord[e][q] for e in below) for q in range(COORDS))
            out.append((ca, cc))
        return tuple(out)

    def addresses(self, lanes: int = 0):
        """Yield ``(address, valid)`` in pattern order, computed with counters and adders only:
        odometers stepped by one with precomputed carry strides, a shadow copy for T1R."""
        mask = (1 << ADDR_BITS) - 1

        class Odo:
            def __init__(s, odo):
                s.radix = getattr(self, f"{odo}_radix")
                s.carry = self.carry_strides(odo)
                s.reset()

            def reset(s):
                s.digits, s.addr, s.coord = [0] * len(s.radix), 0, [0] * COORDS

            def step(s):
                m = len(s.radix) - 1
                while m > 0 and s.digits[m] == s.radix[m] - 1:
                    s.digits[m] = 0
                    m -= 1
                s.digits[m] += 1
                ca, cc = s.carry[m]
                s.addr += ca
                s.coord = [x + y for x, y in zip(s.coord, cc)]

            def state(s):
                return (list(s.digits), s.addr, list(s.coord))

            def load(s, st):
                s.digits, s.addr, s.coord = list(st[0]), st[1], list(st[2])

        pos, tap = Odo("pos"), Odo("tap")
        odos = [(pos, self.pos_drive), (tap, self.tap_drive)]
        acc1 = 0
        for t1 in range(self.n1):
            for o, d in odos:
                if d in (Drive.K, Drive.T2):
                    o.reset()
            saved = [o.state() for o, _ in odos]            # T1R: the shadow copy at the tile start
            acc2 = 0
            for t2 in range(self.n2):
                for o, d in odos:
                    if d == Drive.K:
                        o.reset()
                for k in range(self.nk):
                    for (o, d), st in zip(odos, saved):
                        if d == Drive.T1R and (t2 or k):
                            o.load(st)
                    for r in range(self.nr):
                        addr = self.base + acc1 + acc2 + pos.addr + tap.addr
                        valid = True
                        for c in range(COORDS):
                            value = (self.coord_base[c] + pos.coord[c] + tap.coord[c]) & ((1 << COORD_BITS) - 1)
                            valid &= value < self.coord_lim[c]          # unsigned compare
                        yield addr & mask, valid
                        for o, d in odos:
                            if d == Drive.T1R:
                                o.step()
                    for o, d in odos:
                        if d == Drive.K and k + 1 < self.nk:
                            o.step()
                for o, d in odos:
                    if d == Drive.T2 and t2 + 1 < self.n2:
                        o.step()
                acc2 += self.s2
            acc1 += self.s1


Pattern = ConvPattern | AddressPattern


@dataclass(frozen=True)
class ConvInstruction:
    """A convolution-path instruction (module docstring). Patterns may be :class:`ConvPattern` or
    plain :class:`AddressPattern`; ``draw`` (CONV_GRAD) runs in step with ``out``."""
    op: int
    layer: int = 0
    relu: int = 0
    shift: int = 0
    qcount: int = 0
    pool: int = 0
    unpool_dx: int = 0
    unpool_dy: int = 0
    stored: int = 0
    part: int = 0
    part_count: int = 0
    sum_add: int = 0
    sum_hold: int = 0
    a: Pattern = field(default_factory=AddressPattern)
    b: Pattern = field(default_factory=AddressPattern)
    out: Pattern = field(default_factory=AddressPattern)
    aux: Pattern = field(default_factory=AddressPattern)
    draw: Pattern = field(default_factory=AddressPattern)

    def __post_init__(self):
        if self.op not in ConvOp.NAMES:
            raise IsaError(f"conv instruction op={self.op!r}: must be one of "
                           f"{', '.join(f'{k}={v}' for k, v in ConvOp.NAMES.items())}")
        check_unsigned_fields(self, (("layer", 8), ("relu", 1), ("shift", 6), ("qcount", QCOUNT_BITS),
                                     ("pool", 1), ("unpool_dx", ADDR_BITS),
                                     ("unpool_dy", ADDR_BITS), ("stored", 2), ("part", 2),
                                     ("part_count", QCOUNT_BITS), ("sum_add", 1), ("sum_hold", 1)), "conv instruction")
        if self.part and (self.op == ConvOp.CONV_FWD or not self.stored):
            raise IsaError(f"conv instruction part={self.part} with op {ConvOp.NAMES[self.op]}, stored={self.stored}: "
                           f"only a store-then-quantise CONV_ERR or CONV_GRAD comes in parts")
        if (self.sum_add or self.sum_hold) and (self.op != ConvOp.CONV_GRAD or self.part not in (PART_FIRST, PART_NEXT)):
            raise IsaError(f"conv instruction sum_add={self.sum_add}, sum_hold={self.sum_hold} with op "
                           f"{ConvOp.NAMES[self.op]}, part={self.part}: only a first or next part of a CONV_GRAD "
                           f"accumulates its sums")
        if self.sum_add and self.part == PART_FIRST:
            raise IsaError("conv instruction sum_add=1 with part=PART_FIRST: the first part has no stored sums to add to")
        if self.stored not in STORES:
            raise IsaError(f"conv instruction stored={self.stored}: must be one of "
                           f"{', '.join(f'{k} ({v})' for k, v in STORES.items())}")
        if self.stored and self.op == ConvOp.CONV_FWD:
            raise IsaError(f"conv instruction stored={self.stored} with op CONV_FWD: only CONV_ERR and CONV_GRAD "
                           f"store their sums")
        if self.pool and self.op != ConvOp.CONV_FWD:
            raise IsaError(f"conv instruction pool=1 with op {ConvOp.NAMES[self.op]}: pooling is a CONV_FWD stage")
        if (self.unpool_dx or self.unpool_dy) and self.op != ConvOp.CONV_ERR:
            raise IsaError(f"conv instruction unpool_dx={self.unpool_dx}, unpool_dy={self.unpool_dy} with op "
                           f"{ConvOp.NAMES[self.op]}: unpooling is a CONV_ERR stage")
        if bool(self.unpool_dx) != bool(self.unpool_dy):
            raise IsaError(f"conv instruction unpool_dx={self.unpool_dx}, unpool_dy={self.unpool_dy}: both or neither")
        for name in ("a", "b", "out", "aux", "draw"):
            if not isinstance(getattr(self, name), (ConvPattern, AddressPattern)):
                raise IsaError(f"conv instruction pattern {name}={getattr(self, name)!r}: must be a ConvPattern or "
                               f"an AddressPattern")

    def __str__(self) -> str:
        extra = " +pool" if self.pool else (" +unpool" if self.unpool_dx else "")
        part = {PART_FIRST: " part 1", PART_NEXT: " part", PART_FINISH: " finish"}.get(self.part, "")
        acc = (" +add" if self.sum_add else "") + (" hold" if self.sum_hold else "")
        return f"{ConvOp.NAMES[self.op]} layer {self.layer}{extra}{part}{acc}"


# ---- compiler ------------------------------------------------------------------------------------

def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _top(total: int, lower: tuple[int, ...]) -> int:
    """Radix of a top digit so that indices 0..total−1 never wrap it."""
    return max(1, _cdiv(total, math.prod(lower)))


def _pos_digits(h: int, w: int, total: int, map_hw: tuple[int, int], wpp: int, window: bool = False,
                spatial: bool = True, scale: int = 1):
    """Position odometer (radix, addr, coord) over the positions (b, y, x) of an h×w grid, raster
    order, or window-major (b, y2, x2, dy, dx) when ``window``; ``total`` positions are walked (the
    top digit, b, counts past the batch in a tail tile). Addresses step a map of ``map_hw`` positions
    with ``wpp`` words each, position (b, scale·y, scale·x) (scale 2: a window's first position).
    Coordinates: 0 = y, 1 = x (when ``spatial``), 2 = b."""
    mh, mw = map_hw
    b = (0, 0, 1)
    y, x = ((1, 0, 0), (0, 1, 0)) if spatial else ((0, 0, 0), (0, 0, 0))
    if window:
        lower = (h // 2, w // 2, 2, 2)
        addr = (mh * mw * wpp, 2 * mw * wpp, 2 * wpp, mw * wpp, wpp)
        coord = (b, tuple(2 * v for v in y), tuple(2 * v for v in x), y, x)
    else:
        lower = (h, w)
        addr = (mh * mw * wpp, scale * mw * wpp, scale * wpp)
        coord = (b, y, x)
    return (_top(total, lower), *lower), addr, coord


def compile_conv_fwd(wage: WageConfig, index: int, x: MapLayout, w: WeightLayout, a: MapLayout,
                     lanes: int, layer=None, batch: int | None = None) -> ConvInstruction:
    """CONV_FWD of conv layer ``index``: X (map layout ``x``) ∗ W → [pool] → Q_A → ``a``
    (``layer``: a stand-in LayerSpec, the folded first layer; ``batch``: the images ``x`` and ``a``
    hold, the whole batch by default)."""
    layer = layer or wage.layers[index]
    L, batch = lanes, batch or wage.batch_size
    c, h, wd = layer.in_shape
    o, ho, wo = layer.product_shape
    k, pad = layer.kernel, layer.padding
    wpi, ow, wpr = x.words_per_position, _cdiv(o, L), w.words_per_row
    positions = batch * ho * wo
    n1 = _cdiv(positions, L)
    # Rows: L output positions (window-major when pooled); their digits step the *input* map's
    # addresses, since output (y, x) reads input (y + i − pad, x + j − pad).
    radix, addr, coord = _pos_digits(ho, wo, n1 * L, (h, wd), wpi, window=layer.pool)
    a_pat = ConvPattern(
        base=x.base - pad * wd * wpi - pad * wpi, n1=n1, n2=ow, nk=k * k * wpi, nr=L,
        pos_drive=Drive.T1R, pos_radix=radix, pos_addr=addr, pos_coord=coord,
        tap_drive=Drive.K, tap_radix=(k, k, wpi), tap_addr=(wd * wpi, wpi, 1),
        tap_coord=((1, 0, 0), (0, 1, 0), (0, 0, 0)),
        coord_base=(-pad, -pad, 0), coord_lim=(h, wd, batch))
    b_pat = AddressPattern(w.base, s2=L * wpr, sk=1, sr=wpr, n1=n1, n2=ow, nk=wpr, nr=L, lim=o, row_sel=RowSel.T2)
    if layer.pool:
        h2, w2 = ho // 2, wo // 2
        rows = L // 4
        radix, addr, coord = _pos_digits(h2, w2, n1 * rows, (h2, w2), ow, spatial=False)
        out = ConvPattern(base=a.base, s2=1, n1=n1, n2=ow, nr=rows, pos_drive=Drive.T1R, pos_radix=radix,
                          pos_addr=addr, pos_coord=coord, coord_lim=(1, 1, batch))
        qcount = n1 * ow * rows * L
    else:
        radix, addr, coord = _pos_digits(ho, wo, n1 * L, (ho, wo), ow, spatial=False)
        out = ConvPattern(base=a.base, s2=1, n1=n1, n2=ow, nr=L, pos_drive=Drive.T1R, pos_radix=radix,
                          pos_addr=addr, pos_coord=coord, coord_lim=(1, 1, batch))
        qcount = n1 * ow * L * L
    return ConvInstruction(ConvOp.CONV_FWD, layer=index, relu=int(not layer.last), shift=wage.act_shift(layer),
                           qcount=qcount, pool=int(layer.pool), a=a_pat, b=b_pat, out=out)


#: Most batch bands a staged forward product runs in: each band is two records of the program
#: memory (a COPY_ACT and a CONV_FWD).
MAX_FORWARD_BANDS = 64
#: at most this many batch bands for a gradient product with accumulated sums (3 records each)
MAX_GRADIENT_BANDS = 128


def compile_conv_fwd_staged(wage: WageConfig, index: int, x: MapLayout, w: WeightLayout, a: MapLayout,
                            lanes: int, layer=None, *, stage_base: int, images: int) -> list:
    """CONV_FWD of conv layer ``index`` in batch bands of ``images`` images (the last band may be
    smaller), each after a COPY_ACT of the band's input words (whole activation words, images
    being the map's outermost dimension) to ``stage_base`` in the activation scratchpad; the
    band's CONV_FWD reads them there and writes the band's images of ``a``. The whole product reads
    each input word once per tap and output-channel block; staged, a spilled input map goes
    through the port once (LeNet-5's conv2 at batch 128: 73,728 words instead of 6.55 million).
    Forward products have no global maximum (Q_A is a fixed shift), so the bands are independent
    products with the whole product's results."""
    batch = wage.batch_size
    in_image, out_image = x.words // batch, a.words // batch
    records = []
    for first in range(0, batch, images):
        n = min(images, batch - first)
        records.append(Instruction(Op.COPY_ACT, layer=index,
                                   aux=AddressPattern(x.base + first * in_image, sk=1, nk=n * in_image),
                                   out=AddressPattern(stage_base, sk=1, nk=n * in_image)))
        records.append(compile_conv_fwd(wage, index, dataclasses.replace(x, base=stage_base, batch=n), w,
                                        dataclasses.replace(a, base=a.base + first * out_image, batch=n),
                                        lanes, layer, batch=n))
    return records


def _err_out(wage: WageConfig, index: int, e_prev: MapLayout, a_prev: MapLayout, lanes: int, n1: int, n2: int):
    """Result and aux patterns of an error product whose rows are L positions (b, y, x) of layer
    ``index``'s input map (= layer index−1's pooled output) and whose cols are channel block t2."""
    L, batch = lanes, wage.batch_size
    prev = wage.layers[index - 1]
    c, h, wd = prev.out_shape
    wpi = a_prev.words_per_position
    radix, addr, coord = _pos_digits(h, wd, n1 * L, (h, wd), wpi, spatial=False)
    aux = ConvPattern(base=a_prev.base, s2=1, n1=n1, n2=n2, nr=L, pos_drive=Drive.T1R, pos_radix=radix,
                      pos_addr=addr, pos_coord=coord, coord_lim=(1, 1, batch))
    if prev.pool:
        hp, wp = prev.product_shape[1:]
        _, addr, _ = _pos_digits(h, wd, n1 * L, (hp, wp), wpi, spatial=False, scale=2)   # window's first word
        dx, dy = wpi, wp * wpi
    else:
        dx = dy = 0
    out = ConvPattern(base=e_prev.base, s2=1, n1=n1, n2=n2, nr=L, pos_drive=Drive.T1R, pos_radix=radix,
                      pos_addr=addr, pos_coord=coord, coord_lim=(1, 1, batch))
    return out, aux, dx, dy


def compile_conv_err(wage: WageConfig, index: int, e: MapLayout, w: WeightLayout, e_prev: MapLayout,
                     a_prev: MapLayout, lanes: int) -> ConvInstruction:
    """CONV_ERR of conv layer ``index`` (> 0): E_l ∗ flip(W) → × sat → Q_E → × relu → [unpool] → E_{l−1}."""
    layer = wage.layers[index]
    L, batch = lanes, wage.batch_size
    c, h, wd = layer.in_shape
    o, ho, wo = layer.product_shape
    k, pad = layer.kernel, layer.padding
    ow, wpi, wpt, wpr = e.words_per_position, _cdiv(c, L), w.words_per_tap, w.words_per_row
    n1, n2 = _cdiv(batch * h * wd, L), wpi
    radix, addr, coord = _pos_digits(h, wd, n1 * L, (ho, wo), ow)   # rows step E_l's (product) map
    a_pat = ConvPattern(
        base=e.base + pad * wo * ow + pad * ow, n1=n1, n2=n2, nk=k * k * ow, nr=L,
        pos_drive=Drive.T1R, pos_radix=radix, pos_addr=addr, pos_coord=coord,
        tap_drive=Drive.K, tap_radix=(k, k, ow), tap_addr=(-wo * ow, -ow, 1),
        tap_coord=((-1, 0, 0), (0, -1, 0), (0, 0, 0)),
        coord_base=(pad, pad, 0), coord_lim=(ho, wo, batch))
    b_pat = ConvPattern(
        base=w.base, s2=1, n1=n1, n2=n2, nk=k * k * ow * L, nr=1,
        tap_drive=Drive.K, tap_radix=(k, k, ow * L), tap_addr=(k * wpt, wpt, wpr),
        tap_coord=((0, 0, 0), (0, 0, 0), (1, 0, 0)), coord_lim=(o, 1, 1))
    out, aux, dx, dy = _err_out(wage, index, e_prev, a_prev, L, n1, n2)
    return ConvInstruction(ConvOp.CONV_ERR, layer=index, qcount=n1 * n2 * L * L, unpool_dx=dx, unpool_dy=dy,
                           a=a_pat, b=b_pat, out=out, aux=aux)


def _valid_taps(k: int, pad: int, out: int, v: int) -> tuple[int, int]:
    """(first, count) of the kernel offsets i with v + pad − i inside a map of ``out`` rows: the taps
    of input row (or column) v that an error product's flipped kernel finds in the product map."""
    lo, hi = max(0, v + pad - out + 1), min(k - 1, v + pad)
    return lo, hi - lo + 1


def _err_bands(layer, h: int) -> list[tuple[int, int, int, int]]:
    """Row bands (y_lo, y_count, i_lo, i_count) of a convolution's error product: the input rows y
    whose valid kernel rows i (those with y + pad − i inside the product map) are the same range."""
    bands = []
    for y in range(h):
        i_lo, i_n = _valid_taps(layer.kernel, layer.padding, layer.product_shape[1], y)
        if bands and tuple(bands[-1][2:]) == (i_lo, i_n):
            bands[-1][1] += 1
        else:
            bands.append([y, 1, i_lo, i_n])
    return [tuple(b) for b in bands]


def _err_column_groups(layer, w: int, size: int) -> list[tuple[int, int, int]]:
    """Groups (x_lo, j_lo, j_count) of ``size`` consecutive input columns (``size`` divides ``w``),
    each with the kernel columns valid for any of them (a column outside its own range is walked
    as padding beats)."""
    groups = []
    for x_lo in range(0, w, size):
        ranges = [_valid_taps(layer.kernel, layer.padding, layer.product_shape[2], x) for x in range(x_lo, x_lo + size)]
        j_lo = min(lo for lo, _ in ranges)
        j_hi = max(lo + n - 1 for lo, n in ranges)
        groups.append((x_lo, j_lo, j_hi - j_lo + 1))
    return groups


def err_column_group_sizes(wage: WageConfig, index: int, lanes: int) -> list[int]:
    """The column-group sizes :func:`compile_conv_err_bands` can split conv layer ``index``'s error
    product by, fewest array beats first (the whole width, one group, last among equals): each
    divides the input width, and a band's rows (y, b, x) in a group make whole tiles of L."""
    layer = wage.layers[index]
    h, w = layer.in_shape[1:]
    bands = _err_bands(layer, h)
    cost = {}
    for size in range(w, 0, -1):
        if w % size or (wage.batch_size * size) % lanes:
            continue
        walked = sum(size * j_n for _, _, j_n in _err_column_groups(layer, w, size))
        if walked not in cost.values():           # no fewer beats than a larger group: more records for nothing
            cost[size] = walked
    if len(bands) < 2 and len(cost) < 2:
        return []
    return sorted(cost, key=lambda size: (cost[size], -size))


def compile_conv_err_bands(wage: WageConfig, index: int, e: MapLayout, w: WeightLayout, e_prev: MapLayout,
                           a_prev: MapLayout, lanes: int, stored: int, columns: int | None = None,
                           stage: tuple[int, int] | None = None) -> list | None:
    """CONV_ERR of conv layer ``index`` in parts (``stored`` sums only): its rows split into groups
    of ``columns`` input columns (default: the whole width, one group) and, in each, into bands of
    input rows y with the same valid kernel rows; each part walks only the kernel rows valid in its
    band and the kernel columns valid in its group (a valid convolution's error product wastes the
    others: 56 % of LeNet-5's conv2 taps). Rows run in (column group, y, b, x) order. A finish record
    then quantises the whole tensor from the stored sums (:data:`PART_FIRST` …). None when it does
    not apply: one part only (every tap valid everywhere), or parts that are not whole row tiles
    (batch · ``columns`` not a multiple of L; :func:`err_column_group_sizes` lists the sizes that are).

    ``stage`` = (stage base, images): ``e`` is staged in batch bands of ``images`` images (a divisor
    of the batch): before each band's parts a COPY record copies the band's E_l words (images are
    the map's outermost dimension) to the stage base in the error scratchpad, and the parts read
    them there. The parts alone read every E_l word once per valid tap and weight word; staged, a
    spilled E_l goes through the port once (LeNet-5's conv2 at batch 128: 65,536 words instead of
    6.55 million). Rows then run in (band, column group, y, b, x) order, which the finish record walks;
    the bands' rows are disjoint, so the parts are the same sums in another order."""
    layer = wage.layers[index]
    L, batch = lanes, wage.batch_size
    c, h, wd = layer.in_shape
    o, ho, wo = layer.product_shape
    k, pad = layer.kernel, layer.padding
    g = wd if columns is None else columns
    if not _is_int(g) or not 1 <= g <= wd or wd % g:
        raise ValueError(f"columns={columns!r}: must divide the input width {wd}")
    bands, groups = _err_bands(layer, h), _err_column_groups(layer, wd, g)
    if len(bands) * len(groups) < 2 or (batch * g) % L:
        return None
    ow, wpi, wpt, wpr = e.words_per_position, _cdiv(c, L), w.words_per_tap, w.words_per_row
    n2, total_n1 = wpi, h * batch * wd // L
    qcount = total_n1 * n2 * L * L
    image, prev_image = ho * wo * ow, h * wd * wpi             # words per image of E_l and of A_(l-1)
    nb = batch if stage is None else stage[1]
    if not _is_int(nb) or not 1 <= nb <= batch or batch % nb:
        raise ValueError(f"stage={stage!r}: the images per band must divide the batch {batch}")
    if (nb * g) % L:
        return None

    def rows(base, n1, radix, addr, images):
        """A result-row pattern (aux or out): L rows per tile, channel block t2; the batch digit
        (``images`` in it) is the second but last."""
        coord = ((0, 0, 0),) * (len(radix) - 2) + ((0, 0, 1), (0, 0, 0))
        return ConvPattern(base=base, s2=1, n1=n1, n2=n2, nr=L, pos_drive=Drive.T1R, pos_radix=radix, pos_addr=addr,
                           pos_coord=coord, coord_lim=(1, 1, images))

    ins = []
    for first in range(0, batch, nb):
        e_base = e.base + first * image
        if stage is not None:
            e_base = stage[0]
            ins.append(Instruction(Op.COPY, layer=index, aux=AddressPattern(e.base + first * image, sk=1, nk=nb * image),
                                   out=AddressPattern(stage[0], sk=1, nk=nb * image)))
        for x_lo, j_lo, j_n in groups:
            for y_lo, y_n, i_lo, i_n in bands:
                n1 = y_n * nb * g // L
                radix = (y_n, nb, g)                       # rows (y, b, x), exactly the part's positions
                a_pat = ConvPattern(
                    base=e_base + (y_lo + pad - i_lo) * wo * ow + (x_lo + pad - j_lo) * ow, n1=n1, n2=n2,
                    nk=i_n * j_n * ow, nr=L,
                    pos_drive=Drive.T1R, pos_radix=radix, pos_addr=(wo * ow, image, ow),
                    pos_coord=((1, 0, 0), (0, 0, 1), (0, 1, 0)),
                    tap_drive=Drive.K, tap_radix=(i_n, j_n, ow), tap_addr=(-wo * ow, -ow, 1),
                    tap_coord=((-1, 0, 0), (0, -1, 0), (0, 0, 0)),
                    coord_base=(y_lo + pad - i_lo, x_lo + pad - j_lo, 0), coord_lim=(ho, wo, nb))
                b_pat = ConvPattern(
                    base=w.base + i_lo * k * wpt + j_lo * wpt, s2=1, n1=n1, n2=n2, nk=i_n * j_n * ow * L, nr=1,
                    tap_drive=Drive.K, tap_radix=(i_n, j_n, ow * L), tap_addr=(k * wpt, wpt, wpr),
                    tap_coord=((0, 0, 0), (0, 0, 0), (1, 0, 0)), coord_lim=(o, 1, 1))
                aux = rows(a_prev.base + first * prev_image + (y_lo * wd + x_lo) * wpi, n1, radix,
                           (wd * wpi, prev_image, wpi), nb)
                ins.append(ConvInstruction(ConvOp.CONV_ERR, layer=index, qcount=qcount, stored=stored,
                                           part=PART_NEXT if first or x_lo or y_lo else PART_FIRST,
                                           part_count=n1 * n2 * L * L, a=a_pat, b=b_pat, aux=aux))
    # the finish record: pass 2 over every row, (band, column group, y, b, x) order, digits of one
    # value left out
    prev = wage.layers[index - 1]
    if prev.pool:
        hp, wp = prev.product_shape[1:]
        # each window's first word
        out_image, out_addr, dx, dy = hp * wp * wpi, (2 * g * wpi, 2 * wp * wpi, hp * wp * wpi, 2 * wpi), wpi, wp * wpi
    else:
        out_image, out_addr, dx, dy = prev_image, (g * wpi, wd * wpi, prev_image, wpi), 0, 0
    digits = [(batch // nb, nb * prev_image, nb * out_image), (len(groups), g * wpi, out_addr[0]),
              (h, wd * wpi, out_addr[1]), (nb, prev_image, out_addr[2]), (g, wpi, out_addr[3])]
    digits = [d for n, d in enumerate(digits) if n >= 2 or d[0] > 1]
    radix, aux_addr, out_addr = (tuple(d[m] for d in digits) for m in range(3))
    ins.append(ConvInstruction(ConvOp.CONV_ERR, layer=index, qcount=qcount, stored=stored, part=PART_FINISH,
                               unpool_dx=dx, unpool_dy=dy, out=rows(e_prev.base, total_n1, radix, out_addr, nb),
                               aux=rows(a_prev.base, total_n1, radix, aux_addr, nb)))
    return ins


def compile_fc_err_unpool(wage: WageConfig, index: int, e: MapLayout, w: WeightLayout, e_prev: MapLayout,
                          a_prev: MapLayout, lanes: int) -> ConvInstruction:
    """ERR of fully connected layer ``index`` after a pooled convolution: the fc product (the plain
    patterns of :func:`hw.engine.compiler.compile_network`), results unpooled into E_{l−1}."""
    layer, prev = wage.layers[index], wage.layers[index - 1]
    L, batch = lanes, wage.batch_size
    wpr, ow = w.words_per_row, e.words_per_position
    bt = _cdiv(batch, L)
    c, h2, w2 = prev.out_shape
    hp, wp = prev.product_shape[1:]
    wpi = _cdiv(c, L)                                          # words per position (C % L == 0, checked)
    a_pat = AddressPattern(e.base, s1=L * ow, sk=1, sr=ow, n1=bt, n2=wpr, nk=ow, nr=L, lim=batch, row_sel=RowSel.T1)
    b_pat = AddressPattern(w.base, s2=1, sk=wpr, n1=bt, n2=wpr, nk=ow * L, klim=layer.out_channels)
    aux = AddressPattern(a_prev.base, s1=L * wpr, s2=1, sr=wpr, n1=bt, n2=wpr, nr=L, lim=batch, row_sel=RowSel.T1)
    out = ConvPattern(
        base=e_prev.base, n1=bt, n2=wpr, nr=L,
        pos_drive=Drive.T1R, pos_radix=(_top(bt * L, ()),), pos_addr=(hp * wp * wpi,), pos_coord=((0, 0, 1),),
        tap_drive=Drive.T2, tap_radix=(h2, w2, wpi), tap_addr=(2 * wp * wpi, 2 * wpi, 1),
        tap_coord=((0, 0, 0),) * 3, coord_lim=(1, 1, batch))
    return ConvInstruction(ConvOp.CONV_ERR, layer=index, qcount=bt * wpr * L * L, unpool_dx=wpi, unpool_dy=wp * wpi,
                           a=a_pat, b=b_pat, out=out, aux=aux)


def compile_conv_grad(wage: WageConfig, index: int, e: MapLayout, x: MapLayout, w: WeightLayout,
                      lanes: int, layer=None) -> ConvInstruction:
    """CONV_GRAD of conv layer ``index``: G = Σ_p E_l(p) ⊗ X(p + tap) → Q_G → ΔW (``layer`` as
    for :func:`compile_conv_fwd`)."""
    layer = layer or wage.layers[index]
    L, batch = lanes, wage.batch_size
    c, h, wd = layer.in_shape
    o, ho, wo = layer.product_shape
    k, pad = layer.kernel, layer.padding
    ow, wpi, wpr = e.words_per_position, x.words_per_position, w.words_per_row
    positions = batch * ho * wo
    radix = (batch, ho, wo)
    a_pat = ConvPattern(base=e.base, s1=1, n1=ow, n2=wpr, nk=positions,
                        pos_drive=Drive.K, pos_radix=radix, pos_addr=(ho * wo * ow, wo * ow, ow),
                        pos_coord=((0, 0, 0),) * 3)
    b_pat = ConvPattern(
        base=x.base - pad * wd * wpi - pad * wpi, n1=ow, n2=wpr, nk=positions,
        pos_drive=Drive.K, pos_radix=radix, pos_addr=(h * wd * wpi, wd * wpi, wpi),
        pos_coord=((0, 0, 0), (1, 0, 0), (0, 1, 0)),
        tap_drive=Drive.T2, tap_radix=(k, k, wpi), tap_addr=(wd * wpi, wpi, 1),
        tap_coord=((1, 0, 0), (0, 1, 0), (0, 0, 0)),
        coord_base=(-pad, -pad, 0), coord_lim=(h, wd, 1))
    out = AddressPattern(w.base, s1=L * wpr, s2=1, sr=wpr, n1=ow, n2=wpr, nr=L, lim=o, row_sel=RowSel.T1)
    taps = k * k
    draw = ConvPattern(base=0, n1=ow, n2=wpr, nr=L,
                       pos_drive=Drive.T1R, pos_radix=(ow * L,), pos_addr=(taps * c,), pos_coord=((0, 0, 0),),
                       tap_drive=Drive.T2, tap_radix=(taps, wpi), tap_addr=(c, L), tap_coord=((0, 0, 0),) * 2)
    return ConvInstruction(ConvOp.CONV_GRAD, layer=index, qcount=ow * wpr * L * L,
                           a=a_pat, b=b_pat, out=out, draw=draw)


def compile_conv_grad_staged(wage: WageConfig, index: int, e: MapLayout, x: MapLayout, w: WeightLayout,
                             lanes: int, layer=None, *, stage_base: int, stored: int) -> list:
    """CONV_GRAD of conv layer ``index`` with its error operand staged: one part per output-channel
    block ob (the product's t1), each after a COPY of E_l's block-ob words (one per product
    position, B·Ho·Wo words) to ``stage_base`` in the error scratchpad, whose ``a`` then reads the
    staged words; a finish record quantises the whole tensor from the stored sums. The whole
    product reads each E_l word once per weight word (t2); staged, a spilled E_l goes through the
    port once, and only X can still be a spilled operand of the array's beats (LeNet-5's conv2 at
    batch 128: 1.64 million external words instead of 2.67 million). Same rows, same order."""
    whole = compile_conv_grad(wage, index, e, x, w, lanes, layer)
    layer = layer or wage.layers[index]
    batch = wage.batch_size
    _, ho, wo = layer.product_shape
    ow, hw = e.words_per_position, ho * wo
    records = []
    for ob in range(ow):
        records.append(Instruction(Op.COPY, layer=index,
                                   aux=AddressPattern(e.base + ob, s1=hw * ow, sk=ow, n1=batch, nk=hw),
                                   out=AddressPattern(stage_base, s1=hw, sk=1, n1=batch, nk=hw)))
        a = dataclasses.replace(whole.a, base=stage_base, s1=0, n1=1, pos_addr=(hw, wo, 1))
        b = dataclasses.replace(whole.b, n1=1)
        # the draw pattern rides on the first part: the engine starts the quantiser's draw
        # prefetch there, as for the whole product
        records.append(ConvInstruction(ConvOp.CONV_GRAD, layer=index, qcount=whole.qcount, stored=stored,
                                       part=PART_FIRST if ob == 0 else PART_NEXT, part_count=whole.qcount // ow,
                                       a=a, b=b, draw=whole.draw if ob == 0 else AddressPattern()))
    records.append(ConvInstruction(ConvOp.CONV_GRAD, layer=index, qcount=whole.qcount, stored=stored,
                                   part=PART_FINISH, out=whole.out))
    return records


def compile_conv_grad_bands(wage: WageConfig, index: int, e: MapLayout, x: MapLayout, w: WeightLayout,
                            lanes: int, layer=None, *, e_base: int, x_base: int | None, images: int,
                            stored: int) -> list:
    """CONV_GRAD of conv layer ``index`` in batch bands of ``images`` images (the last may be
    smaller), both operands staged: before each band a COPY of the band's E_l words to ``e_base``
    in the error scratchpad and a COPY_ACT of its input words to ``x_base`` in the activation
    scratchpad, then one part over the band's product positions, every output-channel block and
    weight word (the whole product's rows, in its order). With ``x_base`` None only E_l is staged
    and the parts read the band's input words where they live: a port that keeps up with one
    spilled operand per beat then saves the input's copy (the adding parts' sums share the error
    reader's port client, not the activation reader's). The parts accumulate the stored sums:
    the first band's part stores its rows (``sum_hold``: partial sums do not enter the quantiser),
    each later band's part adds its rows to the stored ones (``sum_add``) and stores them back,
    and only the last band's rows, the finished sums, enter Q_G's pass 1; the finish record
    quantises from the stored sums. The whole product reads X once per weight word and output
    block; banded, a spilled X and E_l each go through the port once, and the sums once per band
    each way (LeNet-5's conv2 at batch 128: 6.55 million words of A0 become 73,728)."""
    whole = compile_conv_grad(wage, index, e, x, w, lanes, layer)
    layer = layer or wage.layers[index]
    batch = wage.batch_size
    c, h, wd = layer.in_shape
    _, ho, wo = layer.product_shape
    pad, wpi = layer.padding, x.words_per_position
    e_image, x_image = e.words // batch, x.words // batch
    records = []
    starts = range(0, batch, images)
    for band, first in enumerate(starts):
        n = min(images, batch - first)
        records.append(Instruction(Op.COPY, layer=index, aux=AddressPattern(e.base + first * e_image, sk=1, nk=n * e_image),
                                   out=AddressPattern(e_base, sk=1, nk=n * e_image)))
        if x_base is not None:
            records.append(Instruction(Op.COPY_ACT, layer=index,
                                       aux=AddressPattern(x.base + first * x_image, sk=1, nk=n * x_image),
                                       out=AddressPattern(x_base, sk=1, nk=n * x_image)))
        band_x = x_base if x_base is not None else x.base + first * x_image
        radix = (n, ho, wo)
        a = dataclasses.replace(whole.a, base=e_base, nk=n * ho * wo, pos_radix=radix)
        b = dataclasses.replace(whole.b, base=band_x - pad * wd * wpi - pad * wpi, nk=n * ho * wo, pos_radix=radix)
        last = band == len(starts) - 1
        records.append(ConvInstruction(ConvOp.CONV_GRAD, layer=index, qcount=whole.qcount, stored=stored,
                                       part=PART_NEXT if band else PART_FIRST, part_count=whole.qcount,
                                       sum_add=int(band > 0), sum_hold=int(not last), a=a, b=b,
                                       draw=AddressPattern() if band else whole.draw))
    records.append(ConvInstruction(ConvOp.CONV_GRAD, layer=index, qcount=whole.qcount, stored=stored,
                                   part=PART_FINISH, out=whole.out))
    return records


def compile_fc_fwd_staged(wage: WageConfig, index: int, x: MapLayout, w: WeightLayout, a: MapLayout, lanes: int,
                          bands: list[tuple[int, int, int | None]]) -> list:
    """FWD of fully connected layer ``index`` in batch bands: ``bands`` lists (first image, images,
    stage base or None) in batch order. A staged band is a COPY_ACT of its images' input words
    (whole activation words) to the stage base, then a FWD over those images reading them there
    and writing their rows of A; a band without a base reads X where it lives. Q_A is a fixed
    shift, so the bands are independent products with the whole product's rows. The whole product
    reads every X word once per output block (LeNet-5's fc1 at batch 128: A1's 16,384 words
    1,048,576 times over); a staged band goes through the port once."""
    layer = wage.layers[index]
    xi, ai = x.words // wage.batch_size, a.words // wage.batch_size
    records = []
    for first, images, base in bands:
        src = x.base + first * xi
        if base is not None:
            records.append(Instruction(Op.COPY_ACT, layer=index, aux=AddressPattern(src, sk=1, nk=images * xi),
                                       out=AddressPattern(base, sk=1, nk=images * xi)))
        records.append(fc_forward(wage, layer, dataclasses.replace(x, base=src if base is None else base), w,
                                  dataclasses.replace(a, base=a.base + first * ai), lanes, batch=images))
    return records


def compile_fc_grad_staged(wage: WageConfig, index: int, e: MapLayout, x: MapLayout, w: WeightLayout,
                           lanes: int, *, stage_base: int, words: int, stored: int) -> list:
    """GRAD of fully connected layer ``index`` with its input X staged in column blocks of
    ``words`` input words (the last may be smaller): before each block a COPY_ACT of those words
    of every image to ``stage_base`` in the activation scratchpad, then one part over the block's
    input words and every output block, its ``b`` reading the staged words; a finish record
    quantises the whole tensor from the stored sums. The whole product
    (:func:`~hw.engine.compiler.fc_gradient`) reads every X word once per output block; staged, a
    spilled X goes through the port once (LeNet-5's fc1 at batch 128: 1,048,576 words of A1
    become 16,384). The tiles run input word first, output block second (t1 = j, t2 = ob), so
    each block's rows are a contiguous run of the whole product's rows: a block's sums are whole
    sums (no accumulation), and the finish record's ``out`` and the first part's ``draw`` are the
    whole product's patterns in that order."""
    layer = wage.layers[index]
    L, batch = lanes, wage.batch_size
    wpr, ow = w.words_per_row, e.words_per_position
    if not 1 <= words <= wpr:
        raise ValueError(f"GRAD layer {index}: words={words} per block must be in 1..{wpr} (the input words)")
    out = AddressPattern(w.base, s1=1, s2=L * wpr, sr=wpr, n1=wpr, n2=ow, nr=L, lim=layer.out_channels,
                         row_sel=RowSel.T2)
    draw = fc_draw(out, w.base, L, index)
    qcount = ow * wpr * L * L
    records = []
    for j in range(0, wpr, words):
        n = min(words, wpr - j)
        records.append(Instruction(Op.COPY_ACT, layer=index,
                                   aux=AddressPattern(x.base + j, s1=wpr, sk=1, n1=batch, nk=n),
                                   out=AddressPattern(stage_base, s1=n, sk=1, n1=batch, nk=n)))
        records.append(ConvInstruction(
            ConvOp.CONV_GRAD, layer=index, qcount=qcount, stored=stored, part=PART_NEXT if j else PART_FIRST,
            part_count=n * ow * L * L,
            a=AddressPattern(e.base, s2=1, sk=ow, n1=n, n2=ow, nk=batch),
            b=AddressPattern(stage_base, s1=1, sk=n, n1=n, n2=ow, nk=batch),
            draw=AddressPattern() if j else draw))
    records.append(ConvInstruction(ConvOp.CONV_GRAD, layer=index, qcount=qcount, stored=stored, part=PART_FINISH,
                                   out=out))
    return records


@dataclass(frozen=True)
class _Span:
    """Scratchpad words [base, end) that hold something live (for :func:`free_runs`)."""
    base: int
    end: int


def free_runs(live, chip: int) -> list[tuple[int, int]]:
    """(start, words) of each run of scratchpad words below ``chip`` that none of the ``live``
    tensors (layouts, or None) holds on chip, lowest first: where tile staging may write."""
    held = sorted((t.base, min(t.end, chip)) for t in live if t is not None and t.base < chip)
    runs, start = [], 0
    for lo, hi in held + [(chip, chip)]:
        if lo > start:
            runs.append((start, lo - start))
        start = max(start, hi)
    return runs


def _check_conv_supported(config: EngineConfig) -> None:
    wage, L = config.wage, config.lanes
    for layer in wage.layers:
        if layer.kind == "fc":
            if layer.index > 0 and wage.layers[layer.index - 1].kind == "conv":
                c = wage.layers[layer.index - 1].out_channels
                if c % L:
                    raise UnsupportedNetwork(
                        f"layer {layer.index} ({layer.describe()}): its input has {c} channels, not a multiple "
                        f"of lanes={L}, so the convolution's map layout is not the flattened layout a fully "
                        f"connected layer reads (a full-map convolution pattern would be needed; not built)")
            if layer.fan_in % L:
                raise UnsupportedNetwork(
                    f"layer {layer.index} ({layer.describe()}): fan-in {layer.fan_in} is not a multiple of "
                    f"lanes={L}; the gradient words would not start on a whole hash of stochastic-rounding draws")
        elif layer.pool and L % 4:
            raise UnsupportedNetwork(f"layer {layer.index}: pooling needs lanes={L} to be a multiple of 4")
    check_loss_and_labels(config)


def compile_conv_network(config: EngineConfig, placement=None) -> Program:
    """Memory map, fit check and one training step's program for a network with convolutions
    (any mix the golden config allows: conv [+pool] layers, then fully connected layers);
    ``placement`` as :func:`hw.engine.compiler.choose_placement`."""
    _check_conv_supported(config)
    wage = config.wage
    L, batch = config.lanes, wage.batch_size
    layers = wage.layers

    # A folded first layer (EngineConfig.fold_input) is a 1×1 convolution over the im2col'd input:
    # k²·C channels on the product grid. Same sums, draws and shifts (alpha stays the layer's).
    spec = {}
    if config.folds_input:
        first = layers[0]
        o, ho, wo = first.product_shape
        spec[0] = dataclasses.replace(first, in_shape=(first.fan_in, ho, wo), kernel=1, padding=0)

    def emit(plan, staging: tuple[str, ...]) -> list:
        """The step's instructions for ``plan``; ``staging``: which spilled operands may be staged
        in scratchpad words the step does not need at the time: "forward" (a layer's input, in
        batch bands), "gradient" (a convolution gradient product's error operand by output-channel
        block, a fully connected one's input by column block) and "grad_bands" (a convolution
        gradient product in batch bands with accumulated sums); each product where its own estimate
        is lower."""
        activations, errors, weights, layer_input = plan.activations, plan.errors, plan.weights, plan.layer_input
        ins: list = []
        grad_args, fc_grad_args = {}, {}
        for layer in layers:
            i = layer.index
            x, w, a = layer_input(i), weights[i], activations[i]
            if layer.kind == "conv":
                whole = compile_conv_fwd(wage, i, x, w, a, L, spec.get(i))
                bands = forward_bands(plan, i, x, whole) if "forward" in staging else None
                staged = (compile_conv_fwd_staged(wage, i, x, w, a, L, spec.get(i), stage_base=bands[0],
                                                  images=bands[1]) if bands else None)
            else:
                whole = fc_forward(wage, layer, x, w, a, L)
                bands = fc_forward_bands(plan, i, x, a, whole) if "forward" in staging else None
                staged = compile_fc_fwd_staged(wage, i, x, w, a, L, bands) if bands else None
            # (each product's own choice: at a fast port the copies may cost more than they save)
            ins += staged if staged and port_bound_cycles(config, staged) < port_bound_cycles(config, [whole]) \
                else [whole]
        ins.append(loss(wage, activations[-1], errors[-1], L))
        for layer in reversed(layers):
            i = layer.index
            x, w, e = layer_input(i), weights[i], errors[i]
            if layer.kind == "conv":
                if i > 0:
                    ins.append(compile_conv_err(wage, i, e, w, errors[i - 1], activations[i - 1], L))
                grad_args[len(ins)] = (wage, i, e, x, w, L, spec.get(i))
                ins.append(compile_conv_grad(wage, i, e, x, w, L, spec.get(i)))
                continue
            if i > 0:
                if layers[i - 1].pool:
                    ins.append(compile_fc_err_unpool(wage, i, e, w, errors[i - 1], activations[i - 1], L))
                else:
                    ins.append(fc_error(wage, layer, e, w, errors[i - 1], activations[i - 1], L))
            fc_grad_args[len(ins)] = (i, e, x, w)
            ins.append(fc_gradient(wage, layer, e, x, w, L))
        ins.append(Instruction(Op.END))
        ins = choose_store_then_quantise(config, ins)
        if "gradient" not in staging and "grad_bands" not in staging:
            return ins
        # A stored gradient product whose input map is spilled may run in batch bands with both
        # operands staged, accumulating its stored sums (compile_conv_grad_bands). One whose error
        # operand is spilled (wholly or in part) and read more than once per word (several weight
        # words) stages that operand block by block in the error scratchpad, if it holds a block
        # (compile_conv_grad_staged).
        staged = []
        for n, one in enumerate(ins):
            if n in grad_args and one.stored:
                i, e, x, w = grad_args[n][1], grad_args[n][2], grad_args[n][3], grad_args[n][4]
                o, ho, wo = (grad_args[n][6] or layers[i]).product_shape
                base = stage_base(plan, i, batch * ho * wo)
                choice = [one]
                if "gradient" in staging and e.end > config.data_words and w.words_per_row > 1 and base is not None:
                    choice = compile_conv_grad_staged(*grad_args[n], stage_base=base, stored=one.stored)
                # (each product's own choice: bands cost copies and sum traffic that a product
                # reading little through the port does not win back; staging the input too saves
                # its reads only where the port cannot keep up with one spilled operand per beat)
                for stage_x in (True, False):
                    bands = grad_bands(plan, i, e, x, stage_x) if "grad_bands" in staging else None
                    if bands:
                        banded = compile_conv_grad_bands(*grad_args[n], e_base=bands[0], x_base=bands[1],
                                                         images=bands[2], stored=one.stored)
                        if port_bound_cycles(config, banded) < port_bound_cycles(config, choice):
                            choice = banded
                staged += choice
                continue
            if n in fc_grad_args and one.stored and "gradient" in staging:
                block = fc_grad_block(plan, *fc_grad_args[n])
                if block:
                    blocks = compile_fc_grad_staged(wage, *fc_grad_args[n], L, stage_base=block[0], words=block[1],
                                                    stored=one.stored)
                    if port_bound_cycles(config, blocks) < port_bound_cycles(config, [one]):
                        staged += blocks
                        continue
            staged.append(one)
        return staged

    def fc_grad_block(plan, i: int, e: MapLayout, x: MapLayout, w: WeightLayout) -> tuple[int, int] | None:
        """(stage base, input words per block) for fully connected layer i's gradient product with
        its input X staged in column blocks, or None: X is on chip, or no block of one input word
        of every image fits. Live at that product, as at a convolution's (:func:`grad_bands`): the
        input batch and A_0 … A_(i−1); the block goes in the largest run of words outside them."""
        chip = config.data_words
        if x.end <= chip:
            return None
        runs = free_runs([plan.inputs, *plan.activations[:i]], chip)
        if not runs:
            return None
        base, size = max(runs, key=lambda run: (run[1], -run[0]))
        words = min(w.words_per_row, size // batch)
        if words < 1 or -(-w.words_per_row // words) > MAX_GRADIENT_BANDS:
            return None
        return base, words

    def grad_bands(plan, i: int, e: MapLayout, x: MapLayout, stage_x: bool = True) -> tuple | None:
        """(error stage base, input stage base, images per band) for layer i's gradient product in
        batch bands, or None: its input map is on chip, or a band of one image does not fit; with
        ``stage_x`` False the input is read in place (input stage base None) and only the error
        operand's room limits the bands. At
        layer i's gradient product the input batch and A_0 … A_(i−1) are live in the activation
        scratchpad (A_(i−1) is the operand; the error products below read the masks of those under
        it) and E_(i−1), E_i in the error scratchpad (see stage_base); each band goes in the largest
        run of words outside them."""
        chip = config.data_words
        if x.end <= chip:
            return None
        act_runs = free_runs([plan.inputs, *plan.activations[:i]], chip)
        err_runs = free_runs(plan.errors[max(i - 1, 0):i + 1], chip)
        if (stage_x and not act_runs) or not err_runs:
            return None
        x_base, x_room = max(act_runs, key=lambda run: (run[1], -run[0])) if stage_x else (None, None)
        e_base, e_room = max(err_runs, key=lambda run: (run[1], -run[0]))
        images = min(batch, e_room // (e.words // batch))
        if stage_x:
            images = min(images, x_room // (x.words // batch))
        if images < 1 or -(-batch // images) > MAX_GRADIENT_BANDS:
            return None
        return e_base, x_base, images

    def stage_base(plan, i: int, block: int) -> int | None:
        """Where layer i's gradient product can stage ``block`` words of its error operand: the
        error scratchpad's free words if they hold a block, else the lowest words that the step no
        longer needs. Backward runs from the last layer down, each layer's error product before its
        gradient product, so when layer i's gradient runs every E_j with j > i has been read for the
        last time; E_i (the operand) and E_(i−1) (written by layer i's error product) are live."""
        chip = config.data_words
        if block <= chip - plan.usage["err"][0]:
            return plan.usage["err"][0]
        return next((start for start, size in free_runs(plan.errors[max(i - 1, 0):i + 1], chip) if size >= block),
                    None)

    def forward_bands(plan, i: int, x: MapLayout, whole: ConvInstruction) -> tuple[int, int] | None:
        """(stage base, images per band) for layer i's forward product, or None: its input map is
        on chip, read once per word, or too large a band count. Forward runs from the first layer
        up, so while layer i's runs the input batch and A_0 … A_i are live (read later in the step,
        or being written) and every A_j with j > i is not yet written: the band goes in the largest
        run of activation-scratchpad words outside the live tensors' on-chip words."""
        chip = config.data_words
        if x.end <= chip or whole.a.length <= x.words:
            return None
        runs = free_runs([plan.inputs, *plan.activations[:i + 1]], chip)
        if not runs:
            return None
        base, size = max(runs, key=lambda run: (run[1], -run[0]))         # the largest, the lowest of equals
        images = min(batch, size // (x.words // batch))
        if images < 1 or -(-batch // images) > MAX_FORWARD_BANDS:
            return None
        return base, images

    def fc_forward_bands(plan, i: int, x: MapLayout, a: MapLayout, whole) -> list | None:
        """Batch bands (first image, images, stage base or None) for fully connected layer i's
        forward product, or None: its input is on chip, read once per word, or no band is staged.
        As for a convolution (forward_bands) the input batch and A_0 … A_(i−1) are live, and so are
        the words of A_i that the bands before have written: a band may stage in the words of A_i's
        later images, so the free room shrinks as the bands go. Each band takes the most images
        (whole tiles of L) whose input words fit a free run, the lowest that holds them; images left
        when no tile fits are read where they live, in one last band."""
        chip = config.data_words
        if x.end <= chip or whole.a.length <= x.words:
            return None
        xi, ai = x.words // batch, a.words // batch
        live = [plan.inputs, *plan.activations[:i]]
        bands, first = [], 0
        while first < batch and len(bands) < MAX_FORWARD_BANDS:
            taken = None
            for images in range(batch - first, 0, -1):
                if images % L and first + images < batch:
                    continue
                done = _Span(a.base, a.base + (first + images) * ai) if a.base < chip else None
                runs = [run for run in free_runs(live + [done], chip) if run[1] >= images * xi]
                if runs:
                    taken = (images, min(runs)[0])
                    break
            if taken is None:
                break
            bands.append((first, taken[0], taken[1]))
            first += taken[0]
        if not bands:
            return None
        if first < batch:
            bands.append((first, batch - first, None))
        return bands

    def error_stage(plan, i: int, columns: int | None) -> tuple[int, int] | None:
        """(stage base, images per band) for layer i's error product in parts of ``columns``
        columns, or None: its operand E_i is on chip, or no band (the most images dividing the
        batch, whose rows make whole tiles) fits the error scratchpad (:func:`stage_base`; at
        layer i's error product the same tensors are live as at its gradient product)."""
        e = plan.errors[i]
        if e.end <= config.data_words:
            return None
        image, g = e.words // batch, columns or layers[i].in_shape[2]
        for images in (n for n in range(batch, 0, -1) if batch % n == 0 and (n * g) % L == 0):
            base = stage_base(plan, i, images * image)
            if base is not None:
                return base, images
        return None

    def is_conv_err(one) -> bool:
        return (isinstance(one, ConvInstruction) and one.op == ConvOp.CONV_ERR and one.part == PART_WHOLE
                and layers[one.layer].kind == "conv")

    from .encoding import encode_program

    def build(staging: tuple[str, ...], plan=None):
        """(finest error-part size index that fits, or inf; plan; instructions) with ``staging``
        and ``plan`` (default: chosen for it)."""
        # (the placement is chosen on the whole error products; the bands below read the same
        # tensors, and error staging changes only them)
        if plan is None:
            plan, ins = choose_placement(config, lambda plan: emit(plan, staging), placement)
        else:
            ins = emit(plan, staging)
        # A conv error product that stores its sums runs in parts (row bands in column groups), each
        # with only its valid taps: the smallest groups whose records the program memory holds, else
        # whole.
        # Several such products step through their size lists together, each staying at its last
        # (largest) size once its list runs out; a product with no list runs whole.
        sizes = {one.layer: err_column_group_sizes(wage, one.layer, L)
                 for one in ins if is_conv_err(one) and one.stored}
        sizes = {i: options for i, options in sizes.items() if options}
        for k in range(max(map(len, sizes.values()), default=0)):
            columns = {i: options[min(k, len(options) - 1)] for i, options in sizes.items()}
            banded = []
            for one in ins:
                i = one.layer
                parts = None
                if is_conv_err(one) and i in columns:
                    stage = error_stage(plan, i, columns[i]) if "error" in staging else None
                    parts = compile_conv_err_bands(wage, i, plan.errors[i], plan.weights[i], plan.errors[i - 1],
                                                   plan.activations[i - 1], L, stored=one.stored, columns=columns[i],
                                                   stage=stage)
                banded += parts or [one]
            if len(encode_program(banded)) <= config.program_words:
                return k, plan, banded
        fits = len(encode_program(ins)) <= config.program_words
        return (max(map(len, sizes.values()), default=0) if fits else math.inf), plan, ins

    # Staging costs program words (a COPY record per block or band, and a product record each).
    # Gradient staging saves array beats where the port is the bound, so it comes first, as long as
    # the program fits. Forward staging (a layer's spilled input in batch bands) and error
    # staging (a stored error product's spilled operand in batch bands, which multiplies its parts'
    # records) save port words at the price of records, and so of coarser error parts: each is
    # taken where the port-bound estimate at the memory's rate (EngineConfig.external_cycles_per_word)
    # is lower; on a tie the fewer records win.
    best, staging = build(("gradient",)), ("gradient",)
    if best[0] == math.inf:
        best, staging = build(()), ()
    candidates = [(staging, best)]
    if any(one.op == Op.COPY_ACT for one in emit(best[1], ("forward",))):
        candidates.append((staging + ("forward",), build(staging + ("forward",))))
    for option, (k, plan, _) in list(candidates):
        if k != math.inf and any(is_conv_err(one) and one.stored and error_stage(plan, one.layer, None)
                                 for one in emit(plan, option)):
            candidates.append((option + ("error",), build(option + ("error",), plan)))
    # gradient bands (accumulated sums) on each of those, on its placement, where some product has them
    for option, (k, plan, _) in list(candidates):
        if k != math.inf and any(getattr(one, "sum_hold", 0) for one in emit(plan, option + ("grad_bands",))):
            candidates.append((option + ("grad_bands",), build(option + ("grad_bands",), plan)))
    best = min((c for _, c in candidates if c[0] != math.inf), default=best,
               key=lambda c: (port_bound_cycles(config, c[2]), len(c[2])))
    _, plan, ins = best
    check_program_fits(config, ins)
    staged_words = [(one.out.base, one.out.base + one.out.n1 * one.out.nk) for one in ins if one.op == Op.COPY]
    overwritten = tuple(e.name for e in plan.errors
                        if any(start < min(e.end, config.data_words) and e.base < end for start, end in staged_words))
    # A forward COPY_ACT stages only in words of activations not yet written; a backward one (a
    # gradient band, after LOSS) may overwrite activations whose last read has passed.
    loss_at = next(n for n, one in enumerate(ins) if one.op == Op.LOSS)
    act_staged = [(one.out.base, one.out.base + one.out.n1 * one.out.nk) for one in ins[loss_at:] if one.op == Op.COPY_ACT]
    overwritten += tuple(a.name for a in plan.activations
                         if a is not None and any(start < min(a.end, config.data_words) and a.base < end
                                                  for start, end in act_staged))
    return Program(config, ins, plan.inputs, plan.activations, plan.errors, plan.weights, plan.usage, plan.straddled,
                   overwritten)


# ---- word-level model ----------------------------------------------------------------------------

class ConvEngineModel(EngineModel):
    """:class:`~hw.engine.model.EngineModel` plus the convolution path: ``act_pool`` holds the 2-bit
    pool index beside each activation lane (as ``act_relu``/``act_sat``)."""

    def __init__(self, program: Program):
        super().__init__(program)
        self.act_pool = np.zeros_like(self.act, dtype=np.int8)

    def run_step(self, step: int, eta_log2: int) -> None:
        """Execute the program once (one training step), in the engine's dataflow order."""
        wage = self.program.config.wage
        L = self.lanes
        for ins in self.program.instructions:
            # The weight store serves the weights as they stand (GRAD l rewrites only layer l, after ERR l).
            wq = forward_weights(self.wmem, wage.kW, wage.kG)
            if isinstance(ins, ConvInstruction):
                self._run_conv(ins, wq, step, eta_log2)
                continue
            if ins.op == Op.FWD:
                p = self._products(ins, self.act, wq)
                self._write_act(ins, p, None)
            elif ins.op == Op.LOSS:
                self._loss(ins)
            elif ins.op == Op.ERR:
                self._error(ins, wq)
            elif ins.op == Op.GRAD:
                self._gradient(ins, step, eta_log2)
            elif ins.op in Op.COPIES:
                self._copy(ins)
            elif ins.op == Op.END:
                break

    def _act_arrays(self) -> list:
        return super()._act_arrays() + [self.act_pool]

    def _write_act(self, ins, p: np.ndarray, idx: np.ndarray | None) -> None:
        wage = self.program.config.wage
        a, relu, sat = quantize_activation(p, ins.shift, wage.kA, relu=bool(ins.relu))
        if relu is None:
            relu = p > 0
        address, valid = self._rows(ins.out)
        target = address[valid]
        self.act[target] = a[valid]
        self.act_relu[target] = relu[valid]
        self.act_sat[target] = sat[valid]
        # (an unpooled product writes pool index 0, as the RTL does: the word may hold a staged one)
        self.act_pool[target] = 0 if idx is None else idx[valid]

    def _error(self, ins, wq: np.ndarray, d: np.ndarray | None = None) -> None:
        """``d``: the rows of a product that ran in parts (else computed here from ``ins``)."""
        wage = self.program.config.wage
        if d is None:
            d = self._products(ins, self.err, wq)      # compute twice or stored: the same integers
        aux, aux_valid = self._rows(ins.aux)
        sat = np.where(aux_valid[:, None], self.act_sat[aux], False)
        relu = np.where(aux_valid[:, None], self.act_relu[aux], False)
        e, _ = quantize_error(d * sat, wage.kE)
        e = e * relu
        address, valid = self._rows(ins.out)
        if isinstance(ins, ConvInstruction) and ins.unpool_dx:
            idx = np.where(aux_valid[:, None], self.act_pool[aux], 0)
            offsets = (0, ins.unpool_dx, ins.unpool_dy, ins.unpool_dy + ins.unpool_dx)   # row-major (dy, dx)
            for w, off in enumerate(offsets):
                self.err[address[valid] + off] = np.where(idx == w, e, 0)[valid]
        else:
            self.err[address[valid]] = e[valid]

    def _gradient(self, ins, step: int, eta_log2: int, g: np.ndarray | None = None, draw_pattern=None) -> None:
        """``g``, ``draw_pattern``: the rows and the first record's draw pattern of a product that ran
        in parts (else computed here from ``ins``)."""
        wage = self.program.config.wage
        L = self.lanes
        if g is None:
            g = self._products(ins, self.err, self.act)
        address, valid = self._rows(ins.out)
        draw, _ = self._rows(draw_pattern or ins.draw)
        indices = (draw[:, None] + np.arange(L)[None, :]).reshape(-1)
        draws = sr_draws(wage.seed, step, ins.layer, 0, wage.sr_bits, indices=indices).reshape(g.shape)
        dw, q = quantize_gradient(g, eta_log2, draws, wage.sr_bits)
        if q is None:
            return
        target = address[valid]
        self.wmem[target] = np.clip(self.wmem[target] - dw[valid], -wage.w_clip, wage.w_clip)

    def _pool(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pool stage: every 4 consecutive result rows (one window, row-major (dy, dx)) → the
        lane-wise maximum and its 2-bit index, the first maximum winning a tie (a comparator chain
        that replaces the running maximum only on a strictly greater value)."""
        win = p.reshape(-1, 4, self.lanes)
        idx = np.argmax(win, axis=1)
        return np.take_along_axis(win, idx[:, None, :], axis=1)[:, 0, :], idx.astype(np.int8)

    def _run_conv(self, ins: ConvInstruction, wq: np.ndarray, step: int, eta_log2: int) -> None:
        if ins.op == ConvOp.CONV_FWD:
            p = self._products(ins, self.act, wq)                 # rows in (t1, t2, r) order
            if ins.pool:
                self._write_act(ins, *self._pool(p))
            else:
                self._write_act(ins, p, None)
        elif ins.part in (PART_FIRST, PART_NEXT):
            # pass 1 of one part: its rows are stored at the write pointer (an adding part's from
            # row 0, each added to the row stored there); those not held enter the quantiser
            if ins.part == PART_FIRST:
                self._sums, self._entered, self._draw = np.zeros((0, self.lanes), np.int64), [], ins.draw
            b_mem = wq if ins.op == ConvOp.CONV_ERR else self.act
            rows = self._products(ins, self.err, b_mem)
            if ins.sum_add:
                if len(rows) > len(self._sums):
                    raise ModelError(f"{ins}: adds {len(rows)} rows to {len(self._sums)} stored ones")
                rows = rows + self._sums[:len(rows)]
                self._sums = np.concatenate([rows, self._sums[len(rows):]])
            else:
                self._sums = np.concatenate([self._sums, rows])
            if not ins.sum_hold:
                self._entered.append(rows)
        elif ins.part == PART_FINISH:
            # pass 2 quantises the stored rows; the quantiser's maximum came from the rows that
            # entered it in pass 1, so a program whose entered rows are not the stored ones is refused
            entered = np.concatenate(self._entered) if self._entered else self._sums[:0]
            stored = self._sums[:ins.qcount // self.lanes]
            if entered.shape != stored.shape or not np.array_equal(entered, stored):
                raise ModelError(f"{ins}: the rows that entered the quantiser in pass 1 are not the stored sums "
                                 f"({len(entered)} entered, {len(stored)} stored)")
            if ins.op == ConvOp.CONV_ERR:
                self._error(ins, wq, stored)
            else:
                self._gradient(ins, step, eta_log2, stored, self._draw)
        elif ins.op == ConvOp.CONV_ERR:
            self._error(ins, wq)
        elif ins.op == ConvOp.CONV_GRAD:
            self._gradient(ins, step, eta_log2)
