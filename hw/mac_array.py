"""Output-stationary systolic MAC array for the three WAGE products (spec §8.2).

:class:`MacArray` computes one R×C tile ``O[r, c] = Σ_k A[r, k]·B[k, c]`` per stream of K operand
beats. ``hw.tiling`` turns whole products (X·Tᵀ, E·T, Eᵀ·X, conv via im2col) into such tiles and
holds the timing model this module's latencies come from.

Interface
---------
``operands`` — ``In(stream.Signature(operand_layout))``, one beat per k (a single stream with a
combined payload, so A and B can never slip against each other):

* ``a``: ``ArrayLayout(signed(a_width), rows)`` — the column A[:, k], lane r for row r;
* ``b``: ``ArrayLayout(signed(b_width), cols)`` — the row B[k, :], lane c for column c;
  in ternary mode ``b_width`` = 2 and each lane is the weight's two's-complement code:
  ``0b01`` = +1, ``0b11`` = −1, ``0b00`` = 0 (``0b10`` is reserved and counts as 0),
  i.e. bit 0 = "non-zero", bit 1 = "negative";
* ``last``: set on the beat k = K−1; it ends the tile (K ≥ 1 beats per tile).

``results`` — ``Out(stream.Signature(result_layout))``, R beats per tile, rows in order:

* ``data``: ``ArrayLayout(signed(accumulator_width), cols)`` — O[r, 0..C−1];
* ``row``: r (``range(rows)``, zero bits when rows = 1); ``last``: set on row R−1.

``k_overflow`` — ``Out(1)``, sticky: a tile had more than ``max_reduction`` beats (its sums may have
wrapped). ``operand_error`` — ``Out(1)``, sticky: an accepted beat carried the code −2^(w−1) in some
lane (outside WAGE's symmetric range, which the accumulators are sized for; in ternary mode that is
the reserved weight code ``0b10``). Both checks run on the input register, pipelined: a flag rises
within three cycles of the offending beat. ``clear_error`` — ``In(1)``: clears both.

Micro-architecture and timing
-----------------------------
Input register (free-running) → skew (row r of A delayed r cycles, column c of B delayed c cycles)
→ R×C elements, A moving right and B moving down one element per cycle. Each element keeps an
accumulator and a result (shadow) register (double-buffered accumulators). The adder feeds only the
accumulator, so both pack into the same slices (an adder output with two flip-flop loads of
different control sets cost a long route to the second): the ``last`` beat adds like any other,
and in the next cycle the shadow register copies the accumulator (a clock enable) while the
accumulator clears (a synchronous reset), neither costing a LUT. That cycle carries no beat:
``ready`` is low for one cycle after a ``last`` beat is accepted.

* int8: the product leaves the MULT18X18D's output register into one fabric register; the
  accumulator is split in two halves with the low half's carry registered into the high half's
  next addition (two short carry chains instead of one 32-bit chain), and the copy into the shadow
  register adds the last carry.
* ternary: ``±a`` in one carry chain, ``acc + (neg ? ~a : a) + neg`` with ``+neg`` as a carry-in.

The valid/last flags of each beat travel down a delay line, then along one chain per row next to
A, so element (r, c) sees them exactly when its product arrives (r + c + 2 + product_latency cycles
after the beat is accepted); the chain registers carry :func:`hw.netlist.kept` names so that
synthesis keeps one copy per element instead of merging each anti-diagonal into one register with
a huge fan-out. The mesh takes its reset through a registered tree (one kept copy per row, then one
per element), so no beat is accepted in the first two cycles after reset.

Finished rows leave through a registered drain, one per column: element (r, c)'s sum is gated by
its own "done" flag and OR-ed, four rows per first stage and up to four registers per further
stage (``ArrayTiming.drain_stages``), into that column's result RAM (a FIFO of 4·R rows in block
RAM with its output register, :class:`hw.bram.BlockRam`; DP16KD with ``REGMODE = OUTREG`` on ECP5).
Columns drain on their own schedules (column c is C−1−c cycles ahead of column C−1, each with its
own write pointer) so that no signal spans the array; a row counts as written when column C−1 has
written it. The read side, common to all columns, is a two-stage pipeline whose clock enables hold
it while the consumer stalls.

The array itself never stalls (no clock enables across the mesh). Back-pressure is handled at the
edges: a ``last`` beat is only accepted (``ready``) when

* R FIFO rows are unreserved (credits; a tile reserves R rows when its ``last`` beat is accepted and
  each row taken from ``results`` returns one a cycle later), so a landing tile always has room
  however long the consumer stalls; and
* at least max(R, C, 2) cycles have passed since the previous ``last`` beat (single shadow
  registers: a row must be copied out before the next tile overwrites it; one row leaves per cycle).

Both tests are registered (computed from the previous cycle's state), so ``ready`` is one LUT from
flip-flops. Beats other than ``last`` are accepted in every cycle but the bubble after a ``last``. ``ready`` therefore depends on
``payload.last`` (allowed: it never depends on ``valid`` the other way round, and ``valid`` never
waits for ``ready``).

Latency (cycle 0 = the cycle the ``last`` beat is accepted): result row r of that tile is valid in
cycle ``cols + 6 + product_latency + drain_stages + r``, product_latency = 4 for int8 (MULT18X18D
input, pipeline, output registers + one fabric register), 0 for ternary. With operands every cycle
and results always taken, a K-beat tile occupies max(K + 1, R, C) cycles while K + 1 ≥ (result
latency + R + 1)/4; shorter tiles wait for the FIFO (exact model: ``hw.tiling.ArrayTiming``).

Accumulators have ``bit_length(max|a|·max|b|·max_reduction) + 1`` bits with the symmetric code
ranges max|a| = 2^(a_width−1)−1 and max|b| = 2^(b_width−1)−1 (1 for ternary), matching spec §8.2
(21 bits for a ternary K of 4608 or 8192; 32 bits for an int8 K of 2^17): no tile of
K ≤ ``max_reduction`` beats can overflow unless ``k_overflow`` or ``operand_error`` is raised.
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import WageConfig

from .bram import BlockRam
from .netlist import kept
from .tiling import MODES, ArrayTiming, accumulator_bits, operand_width

__all__ = ["MacArray", "TARGETS", "MULT18X18D_PARAMETERS"]

TARGETS = ("generic", "ecp5")

#: MULT18X18D configuration for target="ecp5": input A/B, pipeline and output registers on CLK0.
MULT18X18D_PARAMETERS = {
    "REG_INPUTA_CLK": "CLK0", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
    "REG_INPUTB_CLK": "CLK0", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
    "REG_INPUTC_CLK": "NONE",
    "REG_PIPELINE_CLK": "CLK0", "REG_PIPELINE_CE": "CE0", "REG_PIPELINE_RST": "RST0",
    "REG_OUTPUT_CLK": "CLK0", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
    "CLK0_DIV": "ENABLED", "CLK1_DIV": "ENABLED", "CLK2_DIV": "ENABLED", "CLK3_DIV": "ENABLED",
    "HIGHSPEED_CLK": "NONE", "GSR": "DISABLED", "CAS_MATCH_REG": "FALSE",
    "SOURCEB_MODE": "B_SHIFT", "MULT_BYPASS": "DISABLED", "RESETMODE": "SYNC",
}


def _or_all(values):
    out = values[0]
    for v in values[1:]:
        out = out | v
    return out


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    what = f"an integer in {lo}..{hi}" if hi is not None else "a positive integer"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be {what}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name}={value!r}: must be {what}")
    return value


class MacArray(wiring.Component):
    """R×C output-stationary systolic MAC array (see the module docstring for the interface).

    Parameters
    ----------
    config : WageConfig
        Bit widths: operands default to max(kA, kE, kW) bits; ternary mode needs kW = 2.
    rows, cols : int
        Array size R, C ≥ 1.
    mode : "int8" | "ternary"
        "int8": signed A×B multipliers (gradient Eᵀ·X, or every product when kW > 2);
        "ternary": B ∈ {−1, 0, +1}, no multiplier (forward X·Tᵀ, error E·T).
    max_reduction : int
        Largest K a tile may have; sizes the accumulators. Longer tiles set ``k_overflow``.
    target : "generic" | "ecp5"
        int8 multiplier: plain registers and ``*``, or an ECP5 MULT18X18D (same 3-cycle latency).
    a_width, b_width : int, optional
        Override the operand widths (2..18; ternary b is always 2 bits).
    """

    def __init__(self, config, rows, cols, *, mode="int8", max_reduction, target="generic",
                 a_width=None, b_width=None):
        if not isinstance(config, WageConfig):
            raise TypeError(f"config={config!r}: must be a golden.config.WageConfig")
        _check_int("rows", rows, 1)
        _check_int("cols", cols, 1)
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode={mode!r}: must be one of {', '.join(repr(m) for m in MODES)}")
        _check_int("max_reduction", max_reduction, 1)
        if not isinstance(target, str) or target not in TARGETS:
            raise ValueError(f"target={target!r}: must be one of {', '.join(repr(t) for t in TARGETS)}")
        if mode == "ternary" and config.kW != 2:
            raise ValueError(f"mode='ternary' needs ternary weights (kW=2), but the configuration has "
                             f"kW={config.kW}: use mode='int8' for {config.kW}-bit weights")
        default = operand_width(config)
        a_width = default if a_width is None else _check_int("a_width", a_width, 2, 18)
        if mode == "ternary":
            if b_width not in (None, 2):
                raise ValueError(f"b_width={b_width!r}: ternary weights are always 2 bits")
            b_width = 2
        else:
            b_width = default if b_width is None else _check_int("b_width", b_width, 2, 18)
        if default > 18 and target == "ecp5":       # unreachable with kA, kE, kW ≤ 15; kept for clarity
            raise ValueError(f"operand width {default} exceeds the MULT18X18D's 18 bits")

        self._config = config
        self._rows, self._cols, self._mode, self._target = rows, cols, mode, target
        self._max_reduction = max_reduction
        self._a_width, self._b_width = a_width, b_width
        self._acc_width = accumulator_bits(a_width, b_width, max_reduction)
        self._timing = ArrayTiming(rows, cols, mode)

        self.operand_layout = data.StructLayout({
            "a": data.ArrayLayout(signed(a_width), rows),
            "b": data.ArrayLayout(signed(b_width), cols),
            "last": 1,
        })
        self.result_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(self._acc_width), cols),
            "row": range(rows),
            "last": 1,
        })
        super().__init__({
            "operands": In(stream.Signature(self.operand_layout)),
            "results": Out(stream.Signature(self.result_layout)),
            "k_overflow": Out(1),
            "operand_error": Out(1),
            "clear_error": In(1),
        })
        # Design-invariant monitor for tests (a FIFO write without room); never set by a correct design.
        self.overrun = Signal()

    # ---- properties ---------------------------------------------------------------------------
    config = property(lambda self: self._config)
    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    mode = property(lambda self: self._mode)
    target = property(lambda self: self._target)
    max_reduction = property(lambda self: self._max_reduction)
    a_width = property(lambda self: self._a_width)
    b_width = property(lambda self: self._b_width)
    timing = property(lambda self: self._timing)

    @property
    def accumulator_width(self) -> int:
        """Signed accumulator (and result lane) width in bits."""
        return self._acc_width

    @property
    def result_latency(self) -> int:
        """Cycles from accepting a ``last`` beat to that tile's first result row being valid."""
        return self._timing.result_latency

    @staticmethod
    def ternary_code(w: int) -> int:
        """The 2-bit lane code of a ternary weight w ∈ {−1, 0, 1}."""
        return {0: 0b00, 1: 0b01, -1: 0b11}[int(w)]

    # ---- hardware -----------------------------------------------------------------------------
    def _multiplier(self, m: Module, a: Signal, b: Signal, name: str) -> Signal:
        """a·b three registers later (input, pipeline, output), as a MULT18X18D or in fabric."""
        pw = self._a_width + self._b_width
        p = Signal(signed(pw), name=f"{name}_p", reset_less=(self._target == "generic"))
        if self._target == "ecp5":
            a18, b18, p36 = Signal(signed(18), name=f"{name}_a18"), Signal(signed(18), name=f"{name}_b18"), \
                Signal(36, name=f"{name}_p36")
            m.d.comb += [a18.eq(a), b18.eq(b), p.eq(p36[:pw])]
            ports = {f"i_A{i}": a18[i] for i in range(18)}
            ports.update({f"i_B{i}": b18[i] for i in range(18)})
            ports.update({f"i_C{i}": Const(0, 1) for i in range(18)})
            ports.update({f"i_SRIA{i}": Const(0, 1) for i in range(18)})
            ports.update({f"i_SRIB{i}": Const(0, 1) for i in range(18)})
            ports.update({f"o_P{i}": p36[i] for i in range(36)})
            ports.update(i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1), i_SOURCEA=Const(0, 1),
                         i_SOURCEB=Const(0, 1), i_CLK0=ClockSignal("sync"), i_CLK1=Const(0, 1),
                         i_CLK2=Const(0, 1), i_CLK3=Const(0, 1), i_CE0=Const(1, 1), i_CE1=Const(0, 1),
                         i_CE2=Const(0, 1), i_CE3=Const(0, 1), i_RST0=Const(0, 1), i_RST1=Const(0, 1),
                         i_RST2=Const(0, 1), i_RST3=Const(0, 1))
            params = {f"p_{k}": v for k, v in MULT18X18D_PARAMETERS.items()}
            m.submodules[f"{name}_dsp"] = Instance("MULT18X18D", **params, **ports)
        else:
            ia = Signal(signed(self._a_width), name=f"{name}_ia", reset_less=True)
            ib = Signal(signed(self._b_width), name=f"{name}_ib", reset_less=True)
            pp = Signal(signed(pw), name=f"{name}_pp", reset_less=True)
            m.d.sync += [ia.eq(a), ib.eq(b), pp.eq(ia * ib), p.eq(pp)]
        return p

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        aw = self._acc_width
        timing = self._timing
        ml, gap, depth = timing.product_latency, timing.min_last_interval, timing.result_buffer_rows
        op, res = self.operands, self.results

        # ---- admission: credits for result rows, spacing of last beats ------------------------
        # The test is registered (from the previous cycle's state, conservatively) so that `ready`
        # is one LUT from flip-flops: credits only grow between admissions and `since` only counts
        # up, so last cycle's test still holds unless a `last` beat was admitted last cycle.
        credits = Signal(range(depth + 1), init=depth)
        since = Signal(range(gap + 1), init=gap)
        last_ok = Signal(init=1)
        bubble = Signal()        # a last beat was admitted last cycle: no beat now (see the PEs)
        warm = Signal(timing.startup_cycles)   # ones shift in after reset; the mesh's reset lags
        m.d.sync += warm.eq(Cat(1, warm[:-1]))
        m.d.comb += op.ready.eq(warm[-1] & ~bubble & (~op.payload.last | last_ok))
        take = Signal()
        admit_last = Signal()
        m.d.comb += [take.eq(op.valid & op.ready), admit_last.eq(take & op.payload.last)]
        m.d.sync += [last_ok.eq(~admit_last & (credits >= R) & (since >= gap - 1)), bubble.eq(admit_last)]

        took = Signal()
        took_late = Signal()     # a row was taken last cycle: its credit returns now (registered)
        m.d.comb += took.eq(res.valid & res.ready)
        m.d.sync += took_late.eq(took)
        with m.If(admit_last):
            m.d.sync += credits.eq(credits - R + took_late)
        with m.Elif(took_late):
            m.d.sync += credits.eq(credits + 1)
        with m.If(admit_last):
            m.d.sync += since.eq(1)
        with m.Elif(since < gap):
            m.d.sync += since.eq(since + 1)

        # ---- input register and flag delay line ----------------------------------------------
        # The operand register runs freely (no enable to fan out); fv/fl say what it holds.
        stage = Signal(self.operand_layout, reset_less=True)
        m.d.sync += stage.eq(op.payload)
        # (valid, last) of the beat accepted j+1 cycles ago is at tap j. Element (r, c) needs tap
        # r + c + 1 + ml; a shared line up to tap R + ml feeds one private chain per row, and every
        # chain register is kept apart from its equivalents (hw.netlist.kept) so each flag drives
        # one element, not a whole anti-diagonal.
        n_taps = R + ml + 1
        fv = [Signal(name=f"fv{j}") for j in range(n_taps)]
        fl = [Signal(name=f"fl{j}") for j in range(n_taps)]
        m.d.sync += [fv[0].eq(take), fl[0].eq(admit_last)]
        for j in range(1, n_taps):
            m.d.sync += [fv[j].eq(fv[j - 1]), fl[j].eq(fl[j - 1])]
        # The mesh's flip-flops take the reset through a two-level tree of kept copies (one per
        # row, then one per element) instead of one net spanning the die; hence the start-up delay.
        rst_row = [Signal(name=kept(f"rst_{r}"), reset_less=True) for r in range(R)]
        rst_pe = [[Signal(name=kept(f"rst_{r}_{c}"), reset_less=True) for c in range(C)] for r in range(R)]
        for r in range(R):
            m.d.sync += rst_row[r].eq(ResetSignal("sync"))
            m.d.sync += [x.eq(rst_row[r]) for x in rst_pe[r]]
        assert timing.startup_cycles == 2
        row_v = [[Signal(name=kept(f"fv_{r}_{c}"), reset_less=True) for c in range(C)] for r in range(R)]
        row_l = [[Signal(name=kept(f"fl_{r}_{c}"), reset_less=True) for c in range(C)] for r in range(R)]
        for r in range(R):
            m.d.sync += [row_v[r][0].eq(fv[r + ml]), row_l[r][0].eq(fl[r + ml])]
            for c in range(1, C):
                m.d.sync += [row_v[r][c].eq(row_v[r][c - 1]), row_l[r][c].eq(row_l[r][c - 1])]
        # row_x: the cycle after `last` at element (r, c) (always a bubble: the shadow takes the
        # finished sum, the accumulator clears). done: the cycle after that, when element (r, c)'s
        # shadow register holds its finished sum — local to the element; each column drains on
        # its own schedule (column c is C−1−c cycles ahead of column C−1).
        row_x = [[Signal(name=kept(f"fx_{r}_{c}"), reset_less=True) for c in range(C)] for r in range(R)]
        done = [[Signal(name=kept(f"done_{r}_{c}"), reset_less=True) for c in range(C)] for r in range(R)]
        for r in range(R):
            m.d.sync += [row_x[r][c].eq(row_l[r][c]) for c in range(C)]
            m.d.sync += [done[r][c].eq(row_x[r][c]) for c in range(C)]
            for c in range(C):
                with m.If(rst_pe[r][c]):
                    m.d.sync += [row_v[r][c].eq(0), row_l[r][c].eq(0), row_x[r][c].eq(0), done[r][c].eq(0)]

        # ---- checks on the operand register, pipelined off the handshake path ------------------
        rem = Signal(signed(self._max_reduction.bit_length() + 1), init=self._max_reduction - 1)
        with m.If(self.clear_error):
            m.d.sync += [self.k_overflow.eq(0), self.operand_error.eq(0)]
        with m.If(fv[0]):
            # rem = beats the tile may still take − 1; negative once max_reduction beats were seen.
            with m.If(rem[-1]):
                m.d.sync += self.k_overflow.eq(1)
            with m.If(fl[0]):
                m.d.sync += rem.eq(self._max_reduction - 1)
            with m.Elif(~rem[-1]):
                m.d.sync += rem.eq(rem - 1)
        lanes = [stage.a[r] for r in range(R)] + [stage.b[c] for c in range(C)]
        bad_groups = []
        for g in range(0, len(lanes), 4):
            bad = Signal(name=f"bad_operand{g // 4}")
            m.d.sync += bad.eq(fv[0] & Cat(*[lane == -(1 << (len(lane) - 1)) for lane in lanes[g:g + 4]]).any())
            bad_groups.append(bad)
        with m.If(Cat(*bad_groups).any()):
            m.d.sync += self.operand_error.eq(1)

        # ---- skew -------------------------------------------------------------------------------
        def delayed(value, n, shape, name):
            for i in range(n):
                reg = Signal(shape, name=f"{name}_d{i + 1}", reset_less=True)
                m.d.sync += reg.eq(value)
                value = reg
            return value

        a_row = [delayed(stage.a[r], r, signed(self._a_width), f"skew_a{r}") for r in range(R)]
        b_col = [delayed(stage.b[c], c, signed(self._b_width), f"skew_b{c}") for c in range(C)]

        # ---- processing elements ---------------------------------------------------------------
        # Datapath registers need no reset (the flags decide what counts); accumulators do (from
        # the reset tree). The
        # adder feeds the accumulator only, so the two pack into the same slices: the `last` beat
        # adds like any other, and in the bubble cycle after it the shadow register copies the
        # accumulator (a clock enable) while the accumulator clears (a synchronous reset).
        a_reg = [[Signal(signed(self._a_width), name=f"a_{r}_{c}", reset_less=True) for c in range(C)]
                 for r in range(R)]
        b_reg = [[Signal(signed(self._b_width), name=f"b_{r}_{c}", reset_less=True) for c in range(C)]
                 for r in range(R)]
        shadow = [[Signal(signed(aw), name=f"out_{r}_{c}", reset_less=True) for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                m.d.sync += [
                    a_reg[r][c].eq(a_row[r] if c == 0 else a_reg[r][c - 1]),
                    b_reg[r][c].eq(b_col[c] if r == 0 else b_reg[r - 1][c]),
                ]
                acc = Signal(signed(aw), name=f"acc_{r}_{c}", reset_less=True)
                total = Signal(signed(aw), name=f"sum_{r}_{c}")
                finished = acc                     # what the shadow register copies
                if self._mode == "int8":
                    prod = self._multiplier(m, a_reg[r][c], b_reg[r][c], f"mul_{r}_{c}")
                    product = Signal(signed(self._a_width + self._b_width), name=f"prod_{r}_{c}", reset_less=True)
                    addend = Signal(signed(aw), name=f"addend_{r}_{c}")
                    m.d.sync += product.eq(prod)   # fabric register after the product
                    m.d.comb += addend.eq(product)  # sign extension: wiring only
                    # Split accumulator (32-bit chains were the critical path): the low half's
                    # carry is registered and added into the high half with the next beat, so
                    # acc + pending·2^lo is the true sum; the bubble cycle's copy adds the last one.
                    lo = (aw + 1) // 2
                    pending = Signal(name=f"carry_{r}_{c}", reset_less=True)
                    lo_sum = Signal(lo + 1, name=f"sum_lo_{r}_{c}")
                    hi_sum = Signal(aw - lo, name=f"sum_hi_{r}_{c}")
                    hi_done = Signal(aw - lo, name=f"done_hi_{r}_{c}")
                    m.d.comb += [
                        lo_sum.eq(acc[:lo] + addend[:lo]),
                        hi_sum.eq((Cat(pending, acc[lo:]) + Cat(pending, addend[lo:]))[1:]),
                        total.eq(Cat(lo_sum[:lo], hi_sum)),
                        hi_done.eq(acc[lo:] + pending),
                    ]
                    finished = Cat(acc[:lo], hi_done)
                    with m.If(row_v[r][c]):
                        m.d.sync += pending.eq(lo_sum[lo])
                    with m.If(row_x[r][c] | rst_pe[r][c]):
                        m.d.sync += pending.eq(0)
                else:
                    # acc ± a as one carry chain: acc + (neg ? ~a : a) + neg, the +neg entering as the
                    # carry of an extra low bit that is 1 in both operands exactly when neg.
                    b = b_reg[r][c]
                    nonzero, negative = b[0], b[1]
                    carry = Signal(name=f"neg_{r}_{c}")
                    flipped = Signal(signed(aw), name=f"tern_{r}_{c}")
                    m.d.comb += [
                        carry.eq(nonzero & negative),
                        flipped.eq(Mux(nonzero, Mux(negative, ~a_reg[r][c], a_reg[r][c]), 0)),
                        total.eq((Cat(carry, acc) + Cat(carry, flipped))[1:aw + 1]),
                    ]
                with m.If(row_v[r][c]):
                    m.d.sync += acc.eq(total)
                with m.If(row_x[r][c]):
                    m.d.sync += [acc.eq(0), shadow[r][c].eq(finished)]
                with m.If(rst_pe[r][c]):
                    m.d.sync += acc.eq(0)

        # ---- drain: finished rows → one row per cycle, per column --------------------------------
        # Element (r, c)'s shadow register holds its sum from the cycle done[r][c] is high until the
        # next tile lands (≥ min_last_interval later). Per column, registered AND-OR stages gather
        # the rows: first groups of 4 rows (two LUT levels), then OR trees of up to 4 registers per
        # stage, each with a valid lane; rows are one cycle apart, so at most one row is in any
        # stage at a time. Everything a column needs is in that column: no wire spans the array.
        def drain_column(c):
            # a kept copy of warm[-1] per column (one register near the admission logic driving
            # every column was a die-spanning net)
            live = Signal(name=kept(f"warm_{c}"))
            m.d.sync += live.eq(warm[-2] if len(warm) > 1 else 1)
            level = []
            for g in range(0, R, 4):
                rows_g = range(g, min(g + 4, R))
                v = Signal(name=f"drain1_{g // 4}_{c}_v")
                data_g = Signal(aw, name=f"drain1_{g // 4}_{c}", reset_less=True)
                # (until the mesh's delayed reset has landed, stale `done` flags must not count)
                m.d.sync += v.eq(live & Cat(*[done[r][c] for r in rows_g]).any())
                m.d.sync += data_g.eq(_or_all([shadow[r][c].as_unsigned() & done[r][c].replicate(aw)
                                               for r in rows_g]))
                level.append((v, data_g))
            n_stage = 1
            while len(level) > 1:
                n_stage += 1
                merged = []
                for g in range(0, len(level), 4):
                    part = level[g:g + 4]
                    v = Signal(name=f"drain{n_stage}_{g // 4}_{c}_v")
                    data_g = Signal(aw, name=f"drain{n_stage}_{g // 4}_{c}", reset_less=True)
                    m.d.sync += [v.eq(Cat(*[p[0] for p in part]).any()),
                                 data_g.eq(_or_all([p[1] for p in part]))]
                    merged.append((v, data_g))
                level = merged
            assert n_stage == timing.drain_stages
            return level[0]

        # ---- result FIFO in block RAM (registered output), one RAM per column -----------------------
        # Each column writes its rows at its own time into the same slot (its own write pointer);
        # a slot holds a whole row once column C−1, the last, has written it. Admission credits
        # guarantee a free slot for every row written, so the write side has no full test. The read
        # side is a two-stage pipeline (RAM, output register) that advances while its output is
        # empty or taken and holds (clock enables) while the consumer stalls. The RAMs are a power
        # of two deep (pointers wrap for free); credits still count `depth`.
        ram_depth = 1 << (depth - 1).bit_length()
        rptr = Signal(range(ram_depth))
        avail = Signal(range(depth + 1))           # whole rows written and not yet read out
        in_ram, in_out = Signal(), Signal()        # RAM read stage / output register hold a row
        advance, issue = Signal(), Signal()
        m.d.comb += [advance.eq(~in_out | res.ready), issue.eq(advance & (avail != 0))]
        r_data = []
        for c in range(C):
            w_en, w_data = drain_column(c)
            wptr = Signal(range(ram_depth), name=f"wptr_{c}")
            ram = m.submodules[f"result_ram_{c}"] = BlockRam(aw, ram_depth, target=self._target)
            m.d.comb += [ram.w_en.eq(w_en), ram.w_addr.eq(wptr), ram.w_data.eq(w_data),
                         ram.r_addr.eq(rptr), ram.r_en.eq(advance)]
            with m.If(w_en):
                m.d.sync += wptr.eq(wptr + 1)
            r_data.append(ram.r_data)
        row_written = w_en                         # column C−1's write completes a row
        with m.If(issue):
            m.d.sync += rptr.eq(rptr + 1)
        m.d.sync += avail.eq(avail + row_written - issue)
        with m.If(advance):
            m.d.sync += [in_ram.eq(issue), in_out.eq(in_ram)]
        with m.If(row_written & (avail == depth)):
            m.d.sync += self.overrun.eq(1)

        row_out = Signal(range(R))
        with m.If(took):
            m.d.sync += row_out.eq(Mux(row_out == R - 1, 0, row_out + 1))
        m.d.comb += [
            res.valid.eq(in_out),
            res.payload.data.eq(Cat(*r_data)),
            res.payload.row.eq(row_out),
            res.payload.last.eq(row_out == R - 1),
        ]
        return m
