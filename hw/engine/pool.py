"""2×2 max-pool of result rows: four consecutive rows (one window, row-major (dy, dx)) → one row.

:class:`WindowPool` takes rows of ``lanes`` signed sums on ``i`` (the array's result rows of a
pooled convolution, whose positions run window-major) and emits, per four rows, the lane-wise
maximum and its 2-bit index on ``o``. A tie goes to the first maximum in row-major window order
(:func:`golden.ops.maxpool2`): the running maximum is replaced only by a strictly greater value.

Timing: one input row per cycle; the pooled row is registered and valid the cycle after the
window's fourth row is taken. The input is taken whenever the output register is empty or being
read, so a stalled consumer stalls the input cleanly (stream rules hold).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WindowPool"]


class WindowPool(wiring.Component):
    def __init__(self, lanes: int, width: int):
        for name, value, low in (("lanes", lanes, 1), ("width", width, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                self._MustUse__silence = True
                raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
        self.lanes, self.width = lanes, width
        row = data.ArrayLayout(signed(width), lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"data": row}))),
            "o": Out(stream.Signature(data.StructLayout({"data": row, "idx": data.ArrayLayout(2, lanes)}))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        # data registers without reset (only the valid flag and the row counter have one): the
        # reset net fans out to every register that has one, a failing class at 8 lanes
        best = Signal(data.ArrayLayout(signed(self.width), L), reset_less=True)
        best_idx = Signal(data.ArrayLayout(2, L), reset_less=True)
        out = Signal.like(self.o.payload, reset_less=True)
        m.d.comb += self.o.payload.eq(out)
        pos = Signal(2)                                  # row of the window being taken
        take = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(take):
            m.d.sync += pos.eq(pos + 1)
            for j in range(L):
                x = self.i.payload.data[j]
                better = (pos == 0) | (x > best[j])
                new, new_idx = Mux(better, x, best[j]), Mux(better, pos, best_idx[j])
                m.d.sync += [best[j].eq(new), best_idx[j].eq(new_idx)]
                with m.If(pos == 3):
                    m.d.sync += [out.data[j].eq(new), out.idx[j].eq(new_idx)]
            with m.If(pos == 3):
                m.d.sync += self.o.valid.eq(1)
        return m
