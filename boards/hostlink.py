"""The engine's host streams over a UART (the ULX3S's FTDI serial port).

::

    rx ─ UARTRx ─ byte FIFO (16) ─ ChunkDecoder ─▶ to_engine      (words, ``last`` ends a packet)
    tx ◀ UARTTx ◀──────────────── ChunkEncoder ◀─ from_engine

Layers: :mod:`boards.uart` moves bytes, :mod:`boards.framing` turns packets into chunks. The byte
FIFO lets the decoder stall on ``to_engine`` for 16 byte times before the receiver overruns.

Status: ``rx_active`` / ``tx_active`` are stretched to ``activity_cycles`` clocks after the last
received byte / the end of transmission (visible on an LED); ``error`` is sticky until reset and
set by a UART frame error, a receiver overrun or a bad chunk header.
"""

from __future__ import annotations

import numbers

from amaranth.hdl import Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.engine.engine import host_layout

from .framing import ChunkDecoder, ChunkEncoder
from .uart import UARTRx, UARTTx, bit_period

__all__ = ["UARTHostLink"]


class UARTHostLink(wiring.Component):
    RX_FIFO_DEPTH = 16

    def __init__(self, clk_freq, baud, *, activity_cycles: int = 1 << 20):
        try:
            bit_period(clk_freq, baud)
            if isinstance(activity_cycles, bool) or not isinstance(activity_cycles, numbers.Integral):
                raise TypeError(f"activity_cycles={activity_cycles!r}: must be a positive integer")
            if activity_cycles <= 0:
                raise ValueError(f"activity_cycles={activity_cycles!r}: must be a positive integer")
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        self._clk_freq = clk_freq
        self._baud = int(baud)
        self.activity_cycles = int(activity_cycles)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "to_engine": Out(stream.Signature(host_layout())),
            "from_engine": In(stream.Signature(host_layout())),
            "rx_active": Out(1),
            "tx_active": Out(1),
            "error": Out(1),
        })

    @property
    def clk_freq(self):
        return self._clk_freq

    @property
    def baud(self) -> int:
        return self._baud

    def __repr__(self):
        return (f"UARTHostLink(clk_freq={self._clk_freq!r}, baud={self._baud!r}, "
                f"activity_cycles={self.activity_cycles!r})")

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self._clk_freq, self._baud)
        m.submodules.uart_tx = utx = UARTTx(self._clk_freq, self._baud)
        m.submodules.rx_fifo = rxf = fifo.SyncFIFOBuffered(width=8, depth=self.RX_FIFO_DEPTH)
        m.submodules.decoder = dec = ChunkDecoder()
        m.submodules.encoder = enc = ChunkEncoder()

        m.d.comb += [
            urx.rx.eq(self.rx),
            self.tx.eq(utx.tx),
            rxf.w_data.eq(urx.data.payload),
            rxf.w_en.eq(urx.data.valid),
            urx.data.ready.eq(rxf.w_rdy),
            dec.bytes.valid.eq(rxf.r_rdy),
            dec.bytes.payload.eq(rxf.r_data),
            rxf.r_en.eq(dec.bytes.ready),
        ]
        wiring.connect(m, dec.words, wiring.flipped(self.to_engine))
        wiring.connect(m, wiring.flipped(self.from_engine), enc.words)
        wiring.connect(m, enc.bytes, utx.data)

        with m.If(urx.frame_error | urx.overrun | dec.error):
            m.d.sync += self.error.eq(1)

        for active, event in ((self.rx_active, urx.data.valid | urx.frame_error), (self.tx_active, utx.busy)):
            left = Signal(range(self.activity_cycles + 1))
            with m.If(event):
                m.d.sync += left.eq(self.activity_cycles)
            with m.Elif(left != 0):
                m.d.sync += left.eq(left - 1)
            m.d.comb += active.eq(event | (left != 0))
        return m
