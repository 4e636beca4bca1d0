"""The engine's host streams over a UART (the ULX3S's FTDI serial port), through the reliable link.

::

    rx ─ UARTRx ─▶ rx_bytes ┐                    ┌─▶ to_engine   (words, ``last`` ends a packet)
                            │   ReliableLink     │
    tx ◀ UARTTx ◀ tx_bytes ─┘                    └── from_engine

Layers: :mod:`boards.uart` moves bytes, :mod:`boards.link` turns packets into CRC-protected,
sequence-numbered frames with acknowledgements and retransmission (go-back-N, window 4); the host
side is :mod:`boards.link_host`. The link's receiver takes a byte in every clock
(``rx_bytes.ready`` is always 1), so no byte FIFO sits in front of it and the UART receiver cannot
overrun; the link buffers two whole frames for the engine.

Line faults are not errors here: a byte damaged on the line (a flipped bit, a UART frame error, a
lost byte) makes its frame fail the CRC, and the frame is sent again. ``error`` (sticky until
reset) means a protocol violation (:attr:`boards.link.ReliableLink.error`: a frame with a good
header CRC that breaks the frame rules, or an acknowledgement of a frame never sent), i.e. a peer
that does not speak this protocol (or this version of it).

Status: ``rx_active`` / ``tx_active`` are stretched to ``activity_cycles`` clocks after the last
received byte / the end of transmission; ``retry`` to ``retry_cycles`` clocks after the link
recovered from a line fault: a DATA frame was retransmitted (or received again), a frame failed its
CRC or header CRC, or the UART saw a frame error. The link's counters are on :attr:`UARTHostLink.link`.
"""

from __future__ import annotations

import numbers

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.engine.engine import host_layout
from hw.engine.skid import SkidBuffer

from .link import ReliableLink, suggested_timeout_cycles
from .uart import UARTRx, UARTTx, bit_period

__all__ = ["UARTHostLink"]


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r}: must be a positive integer")
    if value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return int(value)


class UARTHostLink(wiring.Component):
    """UART + :class:`~boards.link.ReliableLink` (see the module docstring).

    ``timeout_cycles``: the link's retransmission timeout; default
    :func:`boards.link.suggested_timeout_cycles` for ``clk_freq`` and ``baud``. ``retry_cycles``:
    how long ``retry`` stays high after a recovery; default a quarter of a second (at least
    ``activity_cycles``), so that one retransmission is visible on an LED.
    """

    def __init__(self, clk_freq, baud, *, activity_cycles: int = 1 << 20, retry_cycles: int | None = None,
                 timeout_cycles: int | None = None):
        try:
            bit_period(clk_freq, baud)
            self.activity_cycles = _positive("activity_cycles", activity_cycles)
            if retry_cycles is None:
                retry_cycles = max(self.activity_cycles, int(clk_freq) // 4)
            self.retry_cycles = _positive("retry_cycles", retry_cycles)
            if timeout_cycles is None:
                timeout_cycles = suggested_timeout_cycles(clk_freq, baud)
            self.link = ReliableLink(timeout_cycles=timeout_cycles)
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        self._clk_freq = clk_freq
        self._baud = int(baud)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "to_engine": Out(stream.Signature(host_layout())),
            "from_engine": In(stream.Signature(host_layout())),
            "rx_active": Out(1),
            "tx_active": Out(1),
            "retry": Out(1),
            "error": Out(1),
        })

    @property
    def clk_freq(self):
        return self._clk_freq

    @property
    def baud(self) -> int:
        return self._baud

    @property
    def timeout_cycles(self) -> int:
        return self.link.timeout_cycles

    def __repr__(self):
        return (f"UARTHostLink(clk_freq={self._clk_freq!r}, baud={self._baud!r}, "
                f"activity_cycles={self.activity_cycles!r}, retry_cycles={self.retry_cycles!r}, "
                f"timeout_cycles={self.timeout_cycles!r})")

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self._clk_freq, self._baud)
        m.submodules.uart_tx = utx = UARTTx(self._clk_freq, self._baud)
        m.submodules.link = link = self.link

        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), self.error.eq(link.error)]
        wiring.connect(m, urx.data, link.rx_bytes)               # rx_bytes.ready is always 1
        wiring.connect(m, link.tx_bytes, utx.data)
        # Registered both ways: the link's receive buffer is a block RAM read without an output
        # register, and its word went straight into the engine's packet parser (the 8-lane ULX3S
        # build's critical path, 17.4 ns).
        m.submodules.to_engine_reg = to_reg = SkidBuffer(host_layout())
        m.submodules.from_engine_reg = from_reg = SkidBuffer(host_layout())
        wiring.connect(m, link.to_engine, to_reg.i)
        wiring.connect(m, to_reg.o, wiring.flipped(self.to_engine))
        wiring.connect(m, wiring.flipped(self.from_engine), from_reg.i)
        wiring.connect(m, from_reg.o, link.from_engine)

        # A recovery: one of these counters moved (they saturate at 0xFFFF, after which only the
        # UART's frame errors still show), or the UART dropped a byte with a bad stop bit.
        recovered = urx.frame_error
        for counter in (link.retransmissions, link.duplicates, link.crc_errors, link.header_errors):
            before = Signal.like(counter, name=f"{counter.name}_before")
            m.d.sync += before.eq(counter)
            recovered = recovered | (before != counter)

        for active, event, cycles in ((self.rx_active, urx.data.valid | urx.frame_error, self.activity_cycles),
                                      (self.tx_active, utx.busy, self.activity_cycles),
                                      (self.retry, recovered, self.retry_cycles)):
            left = Signal(range(cycles + 1))
            with m.If(event):
                m.d.sync += left.eq(cycles)
            with m.Elif(left != 0):
                m.d.sync += left.eq(left - 1)
            m.d.comb += active.eq(event | (left != 0))
        return m
