"""Unpool stage of the error path: one pooled error word → the four words of its 2×2 window.

:class:`Unpool` takes, on ``i``, an error word at pooled resolution with the 2-bit pool index of
each lane (which window position won the forward max-pool) and the address of the window's first
product-resolution word; on ``o`` it emits four scratchpad writes, at ``addr``, ``addr + dx``,
``addr + dy`` and ``addr + dy + dx`` (row-major (dy, dx), the order of the pool index), lane j of
write k carrying the value where ``idx[j] == k`` and 0 elsewhere — the scatter of
:func:`golden.ops.maxpool2_backward`, and what :class:`hw.engine.conv.ConvEngineModel` does for a
``CONV_ERR`` with ``unpool_dx``. ``dx``/``dy`` are static while a tensor streams (instruction fields).
A word whose ``valid`` is low (a tile row beyond the batch) produces no writes.

Timing: a taken input word is registered and leaves as four consecutive output beats (one per cycle
while ``o.ready``); the next word is taken in the cycle its last beat leaves, so a stream of words
runs at one write per cycle (four cycles per word), the rate of the scratchpad's write port.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import ADDR_BITS

__all__ = ["Unpool"]


class Unpool(wiring.Component):
    def __init__(self, lanes: int):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            self._MustUse__silence = True
            raise ValueError(f"lanes={lanes!r}: must be a positive integer")
        self.lanes = lanes
        word = data.ArrayLayout(signed(8), lanes)
        super().__init__({
            "dx": In(ADDR_BITS), "dy": In(ADDR_BITS),
            "i": In(stream.Signature(data.StructLayout({
                "data": word, "idx": data.ArrayLayout(2, lanes), "addr": ADDR_BITS, "valid": 1}))),
            "o": Out(stream.Signature(data.StructLayout({"data": word, "addr": ADDR_BITS}))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        held = Signal.like(self.i.payload)
        busy = Signal()
        k = Signal(2)                                   # window position being written
        last = k == 3
        m.d.comb += self.i.ready.eq(~busy | (self.o.ready & last))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), busy.eq(self.i.payload.valid), k.eq(0)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += k.eq(k + 1)
            with m.If(last):
                m.d.sync += busy.eq(0)
        offset = Mux(k[0], self.dx, 0) + Mux(k[1], self.dy, 0)
        m.d.comb += [self.o.valid.eq(busy), self.o.payload.addr.eq(held.addr + offset)]
        m.d.comb += [self.o.payload.data[j].eq(Mux(held.idx[j] == k, held.data[j], 0)) for j in range(L)]
        return m
