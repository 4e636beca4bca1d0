"""Address generator: walks one :class:`~hw.engine.isa.AddressPattern`, one address per cycle.

``cmd`` takes a pattern (:func:`hw.engine.isa.pattern_layout`); ``o`` then carries
``n1·n2·nk·nr`` beats in the order of :meth:`AddressPattern.addresses`:

    ``addr``       base + t1·s1 + t2·s2 + k·sk + r·sr (modulo 2^24)
    ``valid``      (sel·L + r < lim) and (k < klim), sel = 0, t1 or t2 by ``row_sel``
    ``t1``, ``t2`` the tile counters (the loss path looks labels up by t1)
    ``tile_last``  k = nk − 1 and r = nr − 1: the last beat of a tile's reduction
    ``last``       the pattern's final beat

Addresses are formed by adding strides to registered partial sums (base + t1·s1, + t2·s2, + k·sk),
so there is no multiplier; L is a power of two, so sel·L is a shift. A count of 0 counts as 1.
``cmd.ready`` is high while no pattern is running; a new pattern's first beat follows its command
by two cycles (the cycle after the handshake restarts the walk from registers). ``o`` follows the
stream rules (the payload is registered and holds until taken).

With ``payload_held=True`` the sender promises to hold ``cmd.payload`` unchanged from the handshake
until ``cmd.ready`` rises again (the walk's last step), and the walk reads the payload itself: the
generator keeps no copy of the pattern (the engine's instruction register is that copy).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import ADDR_BITS, COUNT_BITS, KCOUNT_BITS, RowSel, pattern_layout

__all__ = ["AddressGenerator", "FlaggedCounter", "address_beat_layout"]


def address_beat_layout() -> data.StructLayout:
    return data.StructLayout({"addr": ADDR_BITS, "valid": 1, "t1": COUNT_BITS, "t2": COUNT_BITS,
                              "tile_last": 1, "last": 1})


class FlaggedCounter:
    """A loop counter with registered ``last`` (value = n − 1) and ``nlast`` (value = n − 2) flags,
    so that a walk's decisions test flip-flops, not a compare of the count (a count of 0 counts as
    1). The constants ``is1`` (n ≤ 1), ``is2`` (n = 2), ``is3`` (n = 3) and ``rm3`` (n − 3) are
    registered from the command (:meth:`prepare`), and :meth:`clear` restarts the counter from them.
    None of them has a reset: a walk prepares and clears its counters before it reads them. (The
    walks' registers were about 8,000 of the 17,764 flip-flops on the 8-lane engine's reset net,
    whose far ends failed by up to 10 ns after placement.)"""

    def __init__(self, name: str, width: int = COUNT_BITS):
        self.v = Signal(width, name=f"{name}", reset_less=True)
        self.last = Signal(name=f"{name}_last", reset_less=True)
        self.nlast = Signal(name=f"{name}_nlast", reset_less=True)
        self.is1 = Signal(name=f"{name}_is1", reset_less=True)
        self.is2 = Signal(name=f"{name}_is2", reset_less=True)
        self.is3 = Signal(name=f"{name}_is3", reset_less=True)
        self.rm3 = Signal(width, name=f"{name}_rm3", reset_less=True)

    def prepare(self, n):
        """Registered constants from the count (loaded with the command)."""
        return [self.is1.eq(n <= 1), self.is2.eq(n == 2), self.is3.eq(n == 3), self.rm3.eq(n - 3)]

    def clear(self):
        return [self.v.eq(0), self.last.eq(self.is1), self.nlast.eq(self.is2)]

    def inc(self):
        return [self.v.eq(self.v + 1), self.last.eq(self.nlast), self.nlast.eq(self.v == self.rm3)]


class AddressGenerator(wiring.Component):
    def __init__(self, lanes: int, *, payload_held: bool = False):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1 or lanes & (lanes - 1):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise ValueError(f"lanes={lanes!r}: must be a positive power of two")
        if not isinstance(payload_held, bool):
            self._MustUse__silence = True
            raise TypeError(f"payload_held={payload_held!r}: must be True or False")
        self.lanes, self.payload_held = lanes, payload_held
        super().__init__({
            "cmd": In(stream.Signature(pattern_layout())),
            "o": Out(stream.Signature(address_beat_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        shift = self.lanes.bit_length() - 1
        busy = Signal()
        if self.payload_held:
            p = self.cmd.payload                       # (the sender holds it while the walk runs)
        else:
            p = Signal(pattern_layout(), reset_less=True)    # the running pattern
            with m.If(~busy):
                m.d.sync += p.eq(self.cmd.payload)
        fields = {"r": "nr", "k": "nk", "t2": "n2", "t1": "n1"}
        loops = {n: FlaggedCounter(n, KCOUNT_BITS if n == "k" else COUNT_BITS) for n in fields}
        r, k, t2, t1 = (loops[n] for n in ("r", "k", "t2", "t1"))
        a1, a2, ak, ar = (Signal(ADDR_BITS, name=n, reset_less=True) for n in ("a1", "a2", "ak", "ar"))   # (INIT)

        # each loop's end is a registered flag (the 16-bit compares of the counts sat in front of
        # the address accumulators' multiplexers: busy → … → a1, −10.9 ns in the 8-lane engine)
        sel = Mux(p.row_sel == RowSel.T1, t1.v, Mux(p.row_sel == RowSel.T2, t2.v, 0))
        row = Signal(COUNT_BITS + shift + 1)
        m.d.comb += row.eq((sel << shift) + r.v)

        m.d.comb += self.cmd.ready.eq(~busy)
        # While idle the pattern registers follow the payload (nothing reads them then): their
        # enables hang on `busy` alone, not on the handshake (in a slot, a join of both walks' states)
        with m.If(~busy):
            for n, c in loops.items():
                m.d.sync += c.prepare(self.cmd.payload[fields[n]])
        # The handshake only loads the pattern and its counts' constants; the walk restarts in the
        # next cycle from those registers (INIT), so the command's valid (the slot's and the
        # engine's launch logic) reaches only two flags, not the counters' next-state logic
        # (busy → slot ready → the loop flags' D inputs, −10.1 ns in the 8-lane engine, placed).
        init = Signal()
        walking = Signal()
        with m.If(self.cmd.valid & ~busy):
            m.d.sync += [busy.eq(1), init.eq(1)]
        with m.If(init):
            base = p.base
            m.d.sync += [init.eq(0), walking.eq(1), a1.eq(base), a2.eq(base), ak.eq(base), ar.eq(base)]
            for c in loops.values():
                m.d.sync += c.clear()

        advance = walking & (~self.o.valid | self.o.ready)
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(1),
                self.o.payload.addr.eq(ar),
                self.o.payload.valid.eq((row < p.lim) & (k.v < p.klim)),
                self.o.payload.t1.eq(t1.v), self.o.payload.t2.eq(t2.v),
                self.o.payload.tile_last.eq(k.last & r.last),
                self.o.payload.last.eq(t1.last & t2.last & k.last & r.last),
            ]
            with m.If(~r.last):
                m.d.sync += r.inc() + [ar.eq(ar + p.sr)]
            with m.Elif(~k.last):
                m.d.sync += r.clear() + k.inc() + [ak.eq(ak + p.sk), ar.eq(ak + p.sk)]
            with m.Elif(~t2.last):
                m.d.sync += r.clear() + k.clear() + t2.inc() + [a2.eq(a2 + p.s2), ak.eq(a2 + p.s2),
                                                                 ar.eq(a2 + p.s2)]
            with m.Elif(~t1.last):
                m.d.sync += (r.clear() + k.clear() + t2.clear() + t1.inc()
                             + [a1.eq(a1 + p.s1), a2.eq(a1 + p.s1), ak.eq(a1 + p.s1), ar.eq(a1 + p.s1)])
            with m.Else():
                m.d.sync += [busy.eq(0), walking.eq(0)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
