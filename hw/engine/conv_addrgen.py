"""Convolution address generator: walks one :class:`~hw.engine.conv.ConvPattern`, one beat per cycle.

The RTL form of :meth:`ConvPattern.addresses <hw.engine.conv.ConvPattern.addresses>` (the incremental
walk; it equals the closed form :meth:`~hw.engine.conv.ConvPattern.address_array` while every
coordinate limit is ≤ 2^15 and coordinate sums stay inside signed 16 bits, as in compiled patterns).

Interface (as :class:`~hw.engine.addrgen.AddressGenerator`)
------------------------------------------------------------
``cmd``  In(stream of :func:`conv_pattern_layout`); :func:`conv_pattern_payload` turns a ConvPattern
         into the payload dict. The payload carries the pattern's fields, except that each odometer's
         per-digit strides are its **carry strides** (``ConvPattern.carry_strides``, computed in Python
         by the helper; the raw strides are not needed by the hardware), and each odometer is padded to
         :data:`~hw.engine.conv.MAX_DIGITS` digits with trailing radix-1 digits (always wrapped, so the
         carry passes through them and they never move).
``o``    Out(stream of :func:`conv_beat_layout`): ``n1·n2·nk·nr`` beats in the order of
         ``ConvPattern.addresses()``:

         ``addr``       the address modulo 2^24
         ``valid``      all three coordinates in range (unsigned compare of the 16-bit sums)
         ``t1``, ``t2`` the tile counters
         ``tile_last``  k = nk − 1 and r = nr − 1 (the last beat of a (t1, t2) tile's reduction)
         ``last``       the pattern's final beat

``drained`` Out(1): no pattern is being walked and no beat is left to leave on ``o``.

``cmd.ready`` is high while no pattern is being walked (the result stages and the output FIFO may
still hold the previous pattern's last beats: every beat carries what its output stage needs). ``o``
follows the stream rules: ``o.valid`` never waits for ``o.ready`` and the payload is registered and
holds until taken.

``digits=(pos, tap)``: the odometers are built with that many digits (of :data:`~hw.engine.conv.MAX_DIGITS`);
a pattern's later digits must have radix 1 (they never move, so leaving them out changes no beat).
The engine builds each slot with the most digits any instruction of its compiled program uses
(:attr:`hw.engine.config.EngineConfig.slot_digits`) and refuses a record that needs more.

``payload_held=True``: the sender holds ``cmd.payload`` unchanged from the handshake until
``cmd.ready`` rises again, and the walk reads it there; the generator keeps no copy of the pattern
(in the engine the instruction register is the one copy: two copies of each slot's pattern were
over 6,000 flip-flops of the 8-lane LeNet-5 engine, and their 1,300-pin load enables and buses
were wire the router could not find).

Throughput and latency: one beat per cycle while ``o.ready`` is held high (tested). The walk runs
ahead of the consumer: its beats pass stage 1 and the output stage, which move every cycle, into
a FIFO of :data:`OUT_DEPTH` beats, and the walk steps only while the beats in flight leave room
(a registered count), so a stalled consumer stops the walk without reaching its enables. After the
command's handshake edge come PREP (per-digit flags of the radices, the first step's stride), INIT
(the walk's reset state), stage 1, the output stage and the FIFO (write, output register):
``o.valid`` rises at the 6th clock edge after the handshake edge. A new command is taken the cycle
after the previous pattern's last step, so back-to-back patterns leave 3 idle cycles on ``o``.

Hardware (no multipliers, no dividers): each odometer (``pos``, ``tap``) is a 16-bit counter per
digit with two registered flags, ``top`` (digit = radix − 1: it wraps at the next carry) and
``ntop`` (digit = radix − 2: the next increment makes it top), an address accumulator and three
coordinate accumulators, and a registered *stride* (the carry strides of the digit the next step
increments). The digit counters run one step ahead of the accumulators: the step from index n to
n + 1 adds the registered stride to the accumulators while the digits move from n + 1 to n + 2 and
the stride for n + 1 → n + 2 is selected by a registered one-hot ``sel``: the digit the next step
increments, the lowest digit not at top (a 6-flag AND chain), computed from the flags' *next*
values and registered with them. A step clears the digits below that digit (their flags reload
from precomputed ``radix = 1``/``radix = 2`` bits), increments it (``top`` ← ``ntop``, ``ntop`` ←
``digit = radix − 3``, a compare of registers). Every odometer register has a shadow copy: a
T1R-driven odometer saves its state at each t1 start and restores it at every other (t2, k) start.
The coordinate accumulators of ``pos`` restart at ``coord_base`` (so a coordinate is one sum), those
of ``tap`` at 0. The loop counters r, k, t2, t1 have the same registered ``last``/``nlast`` flags;
``base + s1·t1 + s2·t2`` is two accumulators as in the AddressGenerator. The command handshake
registers, besides the payload, each count's ``= 1``/``= 2``/``= 3`` bits and ``count − 3`` (one
16-bit compare or subtract from ``cmd.payload``).

Result pipeline: stage 1 registers ``loop part``, ``pos.addr + tap.addr`` and the three
``pos.coord + tap.coord`` sums (and the limits); the output stage registers
``addr = loop part + odometer part`` and ``valid = Π (coord_c < lim_c)``.

Longest combinational paths: a 24-bit accumulator add (register + register: ``a12 + s2``,
``acc + stride``) followed by the two-level next-state multiplexer (reset / restore / step / hold,
its selects from registered loop flags) — yosys ``ltp`` on a generic LUT4 mapping
reports exactly this (18 levels there, because the generic mapping ripples the adder through
LUTs; on ECP5 the add is a CCU2C carry chain); the stride selection (the ``sel`` register → 6:1
AND-OR of the carry strides → next-state multiplexer); the next ``sel`` (loop flags and the step
enable → step/restore → next flags → 6-flag chain); and the output stage's 24-bit add and 16-bit
compares (one carry chain each). No two adders are chained anywhere. The step enable (``running
& room``, two flip-flops) fans out to every walk register's enable, and only to enables: the walk's
actions (which loop the step advances; each odometer's reset, restore, step and save) are
flip-flops computed a cycle ahead from the loop flags' next values, so every enable is one LUT of
four flip-flops and every next-state select a flip-flop (with the actions decoded from the loop
flags, the step enable ran five LUTs deep to the odometers' shadow enables: 27 ns, the 8-lane
engine's worst path placed, 24 ns of it routing). Alone on the 85F at 8 lanes (``python -m hw.synth --unit
slot``) the slot routed at 100.1 MHz when ``o.ready`` was that enable (its critical path then,
5 levels, mostly routing); with the flag chain in front of the stride multiplexer it routed at
89.0 MHz, with ``sel`` registered but ``o.ready`` in the multiplexers' selects at 97.9 MHz. In the
8-lane engine, placed, ``o.valid``/``o.ready`` → step logic → the odometers' enables became the
worst path (27.3 ns), hence the FIFO and its count. Its flip-flops are mostly the payload
register (none with ``payload_held``) and the two odometers with their shadow copies.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .conv import COORD_BITS, COORDS, MAX_DIGITS, ConvPattern, Drive
from .addrgen import FlaggedCounter
from .isa import ADDR_BITS, COUNT_BITS, KCOUNT_BITS

__all__ = ["ConvAddressGenerator", "conv_pattern_layout", "conv_pattern_payload", "conv_beat_layout", "check_digits"]

_ODOS = ("pos", "tap")


def conv_pattern_layout() -> data.StructLayout:
    """The command payload: ConvPattern's fields, with carry strides in place of the raw strides."""
    fields = {"base": signed(ADDR_BITS + 1), "s1": signed(ADDR_BITS + 1), "s2": signed(ADDR_BITS + 1),
              "n1": COUNT_BITS, "n2": COUNT_BITS, "nk": KCOUNT_BITS, "nr": COUNT_BITS}
    for odo in _ODOS:
        fields[f"{odo}_drive"] = 2
        fields[f"{odo}_radix"] = data.ArrayLayout(COUNT_BITS, MAX_DIGITS)
        fields[f"{odo}_carry_addr"] = data.ArrayLayout(signed(ADDR_BITS + 1), MAX_DIGITS)
        fields[f"{odo}_carry_coord"] = data.ArrayLayout(data.ArrayLayout(signed(COORD_BITS), COORDS), MAX_DIGITS)
    fields["coord_base"] = data.ArrayLayout(signed(COORD_BITS), COORDS)
    fields["coord_lim"] = data.ArrayLayout(COORD_BITS, COORDS)
    return data.StructLayout(fields)


#: Beats the walk may have in flight (stage 1, the output stage and the output FIFO): enough for one
#: beat per cycle with the count registered (tested).
OUT_DEPTH = 6


def conv_beat_layout() -> data.StructLayout:
    return data.StructLayout({"addr": ADDR_BITS, "valid": 1, "t1": COUNT_BITS, "t2": COUNT_BITS,
                              "tile_last": 1, "last": 1})


def _wrap(v: int, modulo_bits: int, field_bits: int) -> int:
    """``v`` itself if it fits a signed ``field_bits`` field, else ``v`` modulo 2^modulo_bits as a
    signed value (only the value modulo 2^modulo_bits matters to the wrapping accumulators)."""
    if -(1 << (field_bits - 1)) <= v < (1 << (field_bits - 1)):
        return v
    half = 1 << (modulo_bits - 1)
    return (v + half) % (1 << modulo_bits) - half


def conv_pattern_payload(p: ConvPattern) -> dict:
    """The :func:`conv_pattern_layout` payload of ``p`` (carry strides from ``p.carry_strides``,
    digits padded to MAX_DIGITS with radix-1 digits of stride 0)."""
    if not isinstance(p, ConvPattern):
        raise TypeError(f"pattern={p!r}: must be a hw.engine.conv.ConvPattern")
    out = {"base": p.base, "s1": p.s1, "s2": p.s2, "n1": p.n1, "n2": p.n2, "nk": p.nk, "nr": p.nr,
           "coord_base": list(p.coord_base), "coord_lim": list(p.coord_lim)}
    for odo in _ODOS:
        radix = getattr(p, f"{odo}_radix")
        carry = p.carry_strides(odo)
        pad = MAX_DIGITS - len(radix)
        out[f"{odo}_drive"] = getattr(p, f"{odo}_drive")
        out[f"{odo}_radix"] = list(radix) + [1] * pad
        out[f"{odo}_carry_addr"] = [_wrap(a, ADDR_BITS, ADDR_BITS + 1) for a, _ in carry] + [0] * pad
        out[f"{odo}_carry_coord"] = ([[_wrap(c, COORD_BITS, COORD_BITS) for c in cc] for _, cc in carry]
                                     + [[0] * COORDS] * pad)
    return out


def check_digits(digits, owner=None) -> None:
    """Refuse a ``digits`` option that is not (pos, tap) counts of 1 … MAX_DIGITS (ValueError);
    ``owner``, the component being made, is then not reported as an unused elaboratable."""
    if (not isinstance(digits, tuple) or len(digits) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIGITS for d in digits)):
        if owner is not None:
            owner._MustUse__silence = True
        raise ValueError(f"digits={digits!r}: must be (pos, tap) digit counts, each 1 to {MAX_DIGITS}")


def _or(terms):
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


class _Odometer:
    def __init__(self, m: Module, name: str, p, pos: bool, n_digits: int):
        self.name, self.pos, self.n = name, pos, n_digits
        self.radix = p[f"{name}_radix"]
        self.carry_addr = p[f"{name}_carry_addr"]
        self.carry_coord = p[f"{name}_carry_coord"]
        self.drive = p[f"{name}_drive"]
        self.digits = [FlaggedCounter(f"{name}_d{i}") for i in range(n_digits)]
        # registered at PREP from the digits' is1 flags
        # (no resets here: PREP and INIT load every one of these before the walk reads it)
        self.low = Signal(n_digits, name=f"{name}_low", reset_less=True)   # one-hot: the first step's digit
        self.rst_sa = Signal(ADDR_BITS, name=f"{name}_rst_sa", reset_less=True)
        self.rst_sc = [Signal(COORD_BITS, name=f"{name}_rst_sc{q}", reset_less=True) for q in range(COORDS)]
        # the walk state (digits one step ahead of the accumulators) and its shadow
        self.acc_a = Signal(ADDR_BITS, name=f"{name}_acc_a", reset_less=True)
        self.acc_c = [Signal(COORD_BITS, name=f"{name}_acc_c{q}", reset_less=True) for q in range(COORDS)]
        self.sa = Signal(ADDR_BITS, name=f"{name}_sa", reset_less=True)
        self.sc = [Signal(COORD_BITS, name=f"{name}_sc{q}", reset_less=True) for q in range(COORDS)]

    def select(self, m: Module, top_bits, name: str):
        """One-hot of the digit a step increments, given the ``top`` flags (digit 0 never wraps)."""
        sel = Signal(self.n, name=f"{self.name}_{name}")
        carry = Const(1)
        for i in reversed(range(self.n)):
            m.d.comb += sel[i].eq(carry if i == 0 else carry & ~top_bits[i])
            carry = carry & top_bits[i]
        return sel

    def mux_strides(self, m: Module, onehot, name: str):
        """The carry strides of the one-hot digit (an AND-OR multiplexer)."""
        sa = Signal(ADDR_BITS, name=f"{self.name}_{name}_a")
        sc = [Signal(COORD_BITS, name=f"{self.name}_{name}_c{q}") for q in range(COORDS)]
        terms_a, terms_c = [], [[] for _ in range(COORDS)]
        for i in range(self.n):
            en = onehot[i].replicate(ADDR_BITS)
            terms_a.append(self.carry_addr[i][:ADDR_BITS] & en)
            for q in range(COORDS):
                terms_c[q].append(self.carry_coord[i][q][:COORD_BITS] & en[:COORD_BITS])
        m.d.comb += sa.eq(_or(terms_a))
        for q in range(COORDS):
            m.d.comb += sc[q].eq(_or(terms_c[q]))
        return sa, sc

    def elaborate(self, m: Module, coord_base, prep, init, go, act: "_Actions"):
        """``prep``: derive the reset constants; ``init``: reset (and save); on ``go`` (the walk
        moves), the action ``act`` holds for this step: reset (and save), restore or step (in that
        priority), save (with step: the shadow takes the stepped state). ``act``'s flags are
        flip-flops computed a cycle ahead, so every enable here is one LUT of four flip-flops
        (``init``, the walk's ``running`` and ``room``, an action flag) and every next-state
        multiplexer's select is a flip-flop."""
        digits = self.digits
        low = self.select(m, Cat(*(d.is1 for d in digits)), "low_next")
        with m.If(prep):
            sa, sc = self.mux_strides(m, low, "rst_stride")
            m.d.sync += [self.low.eq(low), self.rst_sa.eq(sa)] + [r.eq(s) for r, s in zip(self.rst_sc, sc)]

        # The digit the next step increments, select(top flags), is itself a register (with a
        # shadow), loaded from the flags' next values: the flag chain no longer sits in front of
        # the stride multiplexer, whose one-hot selects fan out to every stride bit (the slot's
        # critical path, 89 MHz alone on the 85F, was top flags → chain → stride mux → sa).
        sel = Signal(self.n, name=f"{self.name}_sel", reset_less=True)
        step_sa, step_sc = self.mux_strides(m, sel, "stride")

        regs = []

        def reg(sig, rst_value, step_value):
            regs.append((sig, Signal.like(sig, name=f"{sig.name}_shadow"), rst_value, step_value))

        rst_last, step_last = [], []
        for i, d in enumerate(digits):
            wraps = Signal(name=f"{self.name}_d{i}_wraps")  # a more significant digit steps: this one wraps
            m.d.comb += wraps.eq(sel[:i].any() if i else 0)
            low_i = self.low[i]
            rst_last.append(Mux(low_i, d.is2, d.is1))
            step_last.append(Mux(wraps, d.is1, Mux(sel[i], d.nlast, d.last)))
            reg(d.v, Mux(low_i, 1, 0), Mux(wraps, 0, Mux(sel[i], d.v + 1, d.v)))
            reg(d.last, rst_last[i], step_last[i])
            reg(d.nlast, Mux(low_i, d.is3, d.is2), Mux(wraps, d.is2, Mux(sel[i], d.v == d.rm3, d.nlast)))
        reg(sel, self.select(m, Cat(*rst_last), "rst_sel"), self.select(m, Cat(*step_last), "step_sel"))
        reg(self.acc_a, 0, (self.acc_a + self.sa)[:ADDR_BITS])
        for q in range(COORDS):
            reg(self.acc_c[q], coord_base[q][:COORD_BITS] if self.pos else 0,
                (self.acc_c[q] + self.sc[q])[:COORD_BITS])
        reg(self.sa, self.rst_sa, step_sa)
        for q in range(COORDS):
            reg(self.sc[q], self.rst_sc[q], step_sc[q])
        # next state: reset (and save) / restore / step (and save at a T1R tile start) / hold
        with m.If(init | (go & act.moves)):
            for sig, shadow, rst_value, step_value in regs:
                m.d.sync += sig.eq(Mux(act.reset, rst_value, Mux(act.restore, shadow, step_value)))
        with m.If(init | (go & act.saves)):
            for sig, shadow, rst_value, step_value in regs:
                m.d.sync += shadow.eq(Mux(act.reset, rst_value, step_value))


class _Actions:
    """An odometer's action for the walk's next step, as flip-flops computed a cycle ahead from
    the loop flags' next values: ``reset`` (also high during INIT), ``restore``, ``moves`` (the
    walk registers change: reset, restore or step) and ``saves`` (the shadow changes: reset, or
    step with save and no restore)."""

    def __init__(self, name: str):
        self.reset = Signal(name=f"{name}_act_reset")
        self.restore = Signal(name=f"{name}_act_restore")
        self.moves = Signal(name=f"{name}_act_moves")
        self.saves = Signal(name=f"{name}_act_saves")

    def update(self, m: Module, drive, at, to_init):
        """Register the action for the loop position ``at`` (a dict of next-step flags); during
        ``to_init`` (the cycle before INIT) the action is a reset."""
        is_t1r, is_k, is_t2 = (drive == Drive.T1R), (drive == Drive.K), (drive == Drive.T2)
        step = (is_t1r & (at["r"] | at["t1"])) | (is_k & at["k"]) | (is_t2 & at["t2"])
        restore = is_t1r & (at["k"] | at["t2"])
        save = is_t1r & at["t1"]
        rst = (is_k & (at["t2"] | at["t1"])) | (is_t2 & at["t1"])
        m.d.sync += [
            self.reset.eq(to_init | rst),
            self.restore.eq(restore),
            self.moves.eq(rst | restore | step),
            self.saves.eq(rst | (~restore & step & save)),
        ]


class ConvAddressGenerator(wiring.Component):
    """RTL walk of a :class:`~hw.engine.conv.ConvPattern` (see the module docstring)."""

    def __init__(self, lanes: int, *, payload_held: bool = False, digits: tuple = (MAX_DIGITS, MAX_DIGITS)):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1 or lanes & (lanes - 1):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise ValueError(f"lanes={lanes!r}: must be a positive power of two")
        if not isinstance(payload_held, bool):
            self._MustUse__silence = True
            raise TypeError(f"payload_held={payload_held!r}: must be True or False")
        check_digits(digits, self)
        self.lanes = lanes                     # rows are explicit digits: the walk does not use it
        self.payload_held, self.digits = payload_held, digits
        super().__init__({
            "cmd": In(stream.Signature(conv_pattern_layout())),
            "o": Out(stream.Signature(conv_beat_layout())),
            "drained": Out(1),                 # no pattern walked and no beat left to leave on ``o``
        })

    def elaborate(self, platform):
        m = Module()
        IDLE, PREP, INIT, RUN = range(4)
        phase = Signal(2, init=IDLE)
        idle = Signal(init=1)                        # phase == IDLE, as a flip-flop of its own
        if self.payload_held:
            p = self.cmd.payload                     # (the sender holds it while the walk runs)
        else:
            p = Signal(conv_pattern_layout(), reset_less=True)   # the running pattern (loaded while idle)
        loops = {n: FlaggedCounter(n, KCOUNT_BITS if n == "k" else COUNT_BITS) for n in ("r", "k", "t2", "t1")}
        r, k, t2, t1 = (loops[n] for n in ("r", "k", "t2", "t1"))
        odos = [_Odometer(m, "pos", p, pos=True, n_digits=self.digits[0]),
                _Odometer(m, "tap", p, pos=False, n_digits=self.digits[1])]
        a1 = Signal(ADDR_BITS, reset_less=True)      # base + s1·t1 (loaded at INIT, as the loops)
        a12 = Signal(ADDR_BITS, reset_less=True)     # base + s1·t1 + s2·t2

        # -- command: the pattern and its counts' flags -----------------------------------------
        m.d.comb += self.cmd.ready.eq(idle)
        # While idle the pattern registers follow the payload, whether or not it is valid (nothing
        # reads them then): their 1,300 enables hang on the idle flip-flop alone, not on the
        # handshake (the slot's and the engine's ready logic; the slot's highest-fanout net), nor
        # on a compare of the phase (a LUT in front of the fan-out: −3.4 ns at 8 lanes, placed).
        with m.If(self.cmd.valid & idle):
            m.d.sync += [phase.eq(PREP), idle.eq(0)]
        with m.If(idle):
            pl = self.cmd.payload
            if not self.payload_held:
                m.d.sync += p.eq(pl)
            for n, c in loops.items():
                m.d.sync += c.prepare(pl[{"r": "nr", "k": "nk", "t2": "n2", "t1": "n1"}[n]])
            for o in odos:
                for i, d in enumerate(o.digits):
                    m.d.sync += d.prepare(pl[f"{o.name}_radix"][i])
        init = Signal()                              # phase == INIT, as a flip-flop of its own
        with m.If(phase == PREP):
            m.d.sync += [phase.eq(INIT), init.eq(1)]
        with m.If(init):
            m.d.sync += init.eq(0)

        # -- the walk -----------------------------------------------------------------------------
        # The walk runs ahead of its consumer into a FIFO and counts the beats in flight (stage 1,
        # the output stage, the FIFO): it steps while they leave room, so its step enable is two
        # flip-flops (running, room), and the output handshake stays out of the walk's enables
        # (o.valid/o.ready → step logic → the odometers' enables was the 8-lane engine's worst
        # path after placement, 27.3 ns). The consumer's ready reaches only the count and the FIFO.
        running = Signal()                           # phase == RUN, as a flip-flop of its own
        room = Signal(init=1)                        # a step now cannot overfill the FIFO
        in_flight = Signal(range(OUT_DEPTH + 1))
        go = Signal()
        m.d.comb += go.eq(running & room)
        pop = self.o.valid & self.o.ready
        after = Signal(range(OUT_DEPTH + 2))
        m.d.comb += after.eq(in_flight + go - pop)
        m.d.sync += [in_flight.eq(after), room.eq(after < OUT_DEPTH)]
        m.d.comb += self.drained.eq(idle & (in_flight == 0))
        r_end, k_end, t2_end, t1_end = r.last, k.last, t2.last, t1.last
        # Which loop the next step advances: flip-flops, kept a cycle ahead from the loop flags'
        # next values (below), so that the events and the odometers' actions start at registers.
        # (With them computed from the loop flags, room → step logic → the odometers' enables
        # ran five LUTs deep, 24 of its 27 ns routing: the 8-lane engine's worst path, placed.)
        at = {n: Signal(name=f"at_{n}") for n in ("r", "k", "t2", "t1", "done")}
        ev = {n: go & at[n] for n in at}

        with m.If(init):
            m.d.sync += [phase.eq(RUN), running.eq(1), a1.eq(p.base[:ADDR_BITS]), a12.eq(p.base[:ADDR_BITS])]
            for c in loops.values():
                m.d.sync += c.clear()
        with m.If(ev["r"]):
            m.d.sync += r.inc()
        with m.If(ev["k"]):
            m.d.sync += r.clear() + k.inc()
        with m.If(ev["t2"]):
            m.d.sync += r.clear() + k.clear() + t2.inc() + [a12.eq(a12 + p.s2[:ADDR_BITS])]
        with m.If(ev["t1"]):
            a1n = (a1 + p.s1[:ADDR_BITS])[:ADDR_BITS]
            m.d.sync += r.clear() + k.clear() + t2.clear() + t1.inc() + [a1.eq(a1n), a12.eq(a1n)]
        with m.If(ev["done"]):
            m.d.sync += [phase.eq(IDLE), idle.eq(1), running.eq(0)]

        # the loop flags' next values (as the counters' clear/inc above), then the next step's loop
        def next_last(c, inc, clear):
            return Mux(init | clear, c.is1, Mux(inc, c.nlast, c.last))
        r_n = next_last(r, ev["r"], ev["k"] | ev["t2"] | ev["t1"])
        k_n = next_last(k, ev["k"], ev["t2"] | ev["t1"])
        t2_n = next_last(t2, ev["t2"], ev["t1"])
        t1_n = next_last(t1, ev["t1"], 0)
        at_next = {"r": ~r_n, "k": r_n & ~k_n, "t2": r_n & k_n & ~t2_n, "t1": r_n & k_n & t2_n & ~t1_n,
                   "done": r_n & k_n & t2_n & t1_n}
        m.d.sync += [at[n].eq(at_next[n]) for n in at]

        for o in odos:
            act = _Actions(o.name)
            act.update(m, o.drive, at_next, phase == PREP)
            o.elaborate(m, p.coord_base, phase == PREP, init, go, act)

        # -- result pipeline: stage 1 (partial sums), output stage, FIFO ----------------------------
        # The stages move every cycle (the FIFO has room for every beat in flight), so their data
        # registers load unconditionally; a beat is where its valid flag says.
        pos, tap = odos
        s1_valid = Signal()
        s1_loop = Signal(ADDR_BITS, reset_less=True)
        s1_odo = Signal(ADDR_BITS, reset_less=True)
        s1_c = [Signal(COORD_BITS, name=f"s1_c{q}", reset_less=True) for q in range(COORDS)]
        s1_lim = [Signal(COORD_BITS, name=f"s1_lim{q}", reset_less=True) for q in range(COORDS)]
        s1_t1, s1_t2 = Signal(COUNT_BITS, reset_less=True), Signal(COUNT_BITS, reset_less=True)
        s1_tile_last, s1_last = Signal(reset_less=True), Signal(reset_less=True)
        m.d.sync += [
            s1_valid.eq(go),
            s1_loop.eq(a12),
            s1_odo.eq(pos.acc_a + tap.acc_a),
            s1_t1.eq(t1.v), s1_t2.eq(t2.v),
            s1_tile_last.eq(r_end & k_end), s1_last.eq(r_end & k_end & t2_end & t1_end),
        ]
        for q in range(COORDS):
            m.d.sync += [s1_c[q].eq(pos.acc_c[q] + tap.acc_c[q]), s1_lim[q].eq(p.coord_lim[q])]
        s2_valid = Signal()
        s2 = Signal(conv_beat_layout(), reset_less=True)
        m.d.sync += [
            s2_valid.eq(s1_valid),
            s2.addr.eq(s1_loop + s1_odo),
            s2.valid.eq((s1_c[0] < s1_lim[0]) & (s1_c[1] < s1_lim[1]) & (s1_c[2] < s1_lim[2])),
            s2.t1.eq(s1_t1), s2.t2.eq(s1_t2), s2.tile_last.eq(s1_tile_last), s2.last.eq(s1_last),
        ]
        m.submodules.out = out = fifo.SyncFIFOBuffered(width=conv_beat_layout().size, depth=OUT_DEPTH)
        m.d.comb += [out.w_en.eq(s2_valid), out.w_data.eq(s2.as_value()),
                     self.o.valid.eq(out.r_rdy), self.o.payload.eq(out.r_data), out.r_en.eq(self.o.ready)]
        return m
