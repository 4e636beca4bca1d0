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
by one cycle. ``o`` follows the stream rules (the payload is registered and holds until taken).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import ADDR_BITS, COUNT_BITS, KCOUNT_BITS, RowSel, pattern_layout

__all__ = ["AddressGenerator", "address_beat_layout"]


def address_beat_layout() -> data.StructLayout:
    return data.StructLayout({"addr": ADDR_BITS, "valid": 1, "t1": COUNT_BITS, "t2": COUNT_BITS,
                              "tile_last": 1, "last": 1})


class AddressGenerator(wiring.Component):
    def __init__(self, lanes: int):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1 or lanes & (lanes - 1):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise ValueError(f"lanes={lanes!r}: must be a positive power of two")
        self.lanes = lanes
        super().__init__({
            "cmd": In(stream.Signature(pattern_layout())),
            "o": Out(stream.Signature(address_beat_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        shift = self.lanes.bit_length() - 1
        p = Signal(pattern_layout(), reset_less=True)  # the running pattern (loaded with the command)
        busy = Signal()
        t1, t2, r = (Signal(COUNT_BITS, name=n) for n in ("t1", "t2", "r"))
        k = Signal(KCOUNT_BITS, name="k")
        a1, a2, ak, ar = (Signal(ADDR_BITS, name=n) for n in ("a1", "a2", "ak", "ar"))

        def top(n):
            return Mux(n == 0, 0, n - 1)

        # each counter's last value, registered with the command (no subtraction before the compares)
        tops = {n: Signal(len(getattr(p, n)), name=f"top_{n}", reset_less=True) for n in ("nr", "nk", "n2", "n1")}
        r_end, k_end, t2_end, t1_end = r == tops["nr"], k == tops["nk"], t2 == tops["n2"], t1 == tops["n1"]
        sel = Mux(p.row_sel == RowSel.T1, t1, Mux(p.row_sel == RowSel.T2, t2, 0))
        row = Signal(COUNT_BITS + shift + 1)
        m.d.comb += row.eq((sel << shift) + r)

        m.d.comb += self.cmd.ready.eq(~busy)
        # While idle the pattern registers follow the payload (nothing reads them then): their
        # enables hang on `busy` alone, not on the handshake (in a slot, a join of both walks' states)
        with m.If(~busy):
            m.d.sync += p.eq(self.cmd.payload)
            m.d.sync += [tops[n].eq(top(getattr(self.cmd.payload, n))) for n in tops]
        with m.If(self.cmd.valid & ~busy):
            base = self.cmd.payload.base
            m.d.sync += [busy.eq(1), t1.eq(0), t2.eq(0), k.eq(0), r.eq(0),
                         a1.eq(base), a2.eq(base), ak.eq(base), ar.eq(base)]

        advance = busy & (~self.o.valid | self.o.ready)
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(1),
                self.o.payload.addr.eq(ar),
                self.o.payload.valid.eq((row < p.lim) & (k < p.klim)),
                self.o.payload.t1.eq(t1), self.o.payload.t2.eq(t2),
                self.o.payload.tile_last.eq(k_end & r_end),
                self.o.payload.last.eq(t1_end & t2_end & k_end & r_end),
            ]
            with m.If(~r_end):
                m.d.sync += [r.eq(r + 1), ar.eq(ar + p.sr)]
            with m.Elif(~k_end):
                m.d.sync += [r.eq(0), k.eq(k + 1), ak.eq(ak + p.sk), ar.eq(ak + p.sk)]
            with m.Elif(~t2_end):
                m.d.sync += [r.eq(0), k.eq(0), t2.eq(t2 + 1), a2.eq(a2 + p.s2), ak.eq(a2 + p.s2),
                             ar.eq(a2 + p.s2)]
            with m.Elif(~t1_end):
                m.d.sync += [r.eq(0), k.eq(0), t2.eq(0), t1.eq(t1 + 1), a1.eq(a1 + p.s1), a2.eq(a1 + p.s1),
                             ak.eq(a1 + p.s1), ar.eq(a1 + p.s1)]
            with m.Else():
                m.d.sync += busy.eq(0)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
