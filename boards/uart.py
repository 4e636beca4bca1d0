"""8N1 UART transmitter and receiver (LSB first), timed by a phase accumulator.

Bit timing. ``clk_freq / baud`` is reduced to a fraction ``p / q`` (denominator at most 2**16,
exact for the usual cases: 50 MHz / 3 Mbaud = 50/3). A phase register counts up by ``q`` every clock
and wraps at ``p``; a wrap is a bit-clock *tick*. Ticks therefore come every ``p / q`` clocks on
average, each one within one clock of the ideal time, so a non-integer ratio (16.67 clocks per bit)
keeps the bit rate exact instead of rounding every bit to 16 or 17 clocks: the error over a frame
(and over any run of back-to-back frames) stays below one clock.

:class:`UARTTx` starts its phase at 0 when it leaves idle, so bit ``k`` of a burst of back-to-back
frames (start bit of the first frame = bit 0) begins ``ceil(k · p / q)`` clocks after the byte was
taken. :class:`UARTRx` restarts its phase on every start edge so that its samples fall at mid-bit.

Both require ``clk_freq / baud >= 8``: the receiver's synchroniser and edge detection cost about
two clocks of the half-bit margin.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTTx", "UARTRx", "MIN_CLOCKS_PER_BIT", "bit_period"]

#: Smallest accepted ``clk_freq / baud``.
MIN_CLOCKS_PER_BIT = 8
_MAX_DENOMINATOR = 1 << 16


def bit_period(clk_freq, baud) -> Fraction:
    """Validate ``clk_freq`` (Hz, > 0) and ``baud`` (positive int) and return the bit period in
    clocks as the fraction ``p / q`` the phase accumulator uses."""
    if isinstance(clk_freq, bool) or not isinstance(clk_freq, numbers.Real):
        raise TypeError(f"clk_freq={clk_freq!r}: must be a number (Hz)")
    if not math.isfinite(clk_freq) or clk_freq <= 0:
        raise ValueError(f"clk_freq={clk_freq!r}: must be a positive frequency in Hz")
    if isinstance(baud, bool) or not isinstance(baud, numbers.Integral):
        raise TypeError(f"baud={baud!r}: must be a positive integer")
    if baud <= 0:
        raise ValueError(f"baud={baud!r}: must be a positive integer")
    ratio = Fraction(clk_freq) / int(baud)
    if ratio < MIN_CLOCKS_PER_BIT:
        raise ValueError(f"clk_freq={clk_freq!r}, baud={baud!r}: clk_freq/baud = {float(ratio):.4g} "
                         f"clocks per bit, must be at least {MIN_CLOCKS_PER_BIT}")
    return ratio.limit_denominator(_MAX_DENOMINATOR)


class _UARTBase(wiring.Component):
    def __init__(self, clk_freq, baud, signature):
        try:
            self._period = bit_period(clk_freq, baud)
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        self._clk_freq = clk_freq
        self._baud = int(baud)
        super().__init__(signature)

    @property
    def clk_freq(self):
        """Clock frequency in Hz, as given."""
        return self._clk_freq

    @property
    def baud(self) -> int:
        return self._baud

    @property
    def period(self) -> Fraction:
        """Bit period in clocks (``p / q`` of the phase accumulator)."""
        return self._period

    def __repr__(self):
        return (f"{type(self).__name__}(clk_freq={self._clk_freq!r}, baud={self._baud!r}) "
                f"# {float(self._period):.4g} clocks/bit")

    def _phase(self, m, name):
        """The phase register and its combinational tick (the register's update is the caller's)."""
        p, q = self._period.numerator, self._period.denominator
        phase = Signal(range(p), name=f"{name}_phase")
        tick = Signal(name=f"{name}_tick")
        m.d.comb += tick.eq(phase >= p - q)
        step = Mux(tick, phase - (p - q), phase + q)
        return phase, tick, step


class UARTTx(_UARTBase):
    """8N1 transmitter. Takes a byte from ``data`` when idle or in the clock its previous stop bit
    ends (so a continuous stream goes out back to back); ``tx`` idles high and is a register;
    ``busy`` is high while a frame is on the line."""

    def __init__(self, clk_freq, baud):
        super().__init__(clk_freq, baud, {
            "data": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        phase, tick, step = self._phase(m, "tx")
        busy = Signal()
        tx = Signal(init=1)
        shift = Signal(9)                           # bits after the current one: data, then stop
        left = Signal(range(10))                    # how many of them are still to go
        done = Signal()
        m.d.comb += [
            self.tx.eq(tx),
            self.busy.eq(busy),
            done.eq(busy & tick & (left == 0)),     # the stop bit ends in this clock
            self.data.ready.eq(~busy | done),
        ]
        with m.If(busy):
            m.d.sync += phase.eq(step)
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [busy.eq(1), tx.eq(0), shift.eq(Cat(self.data.payload, 1)), left.eq(9)]
            with m.If(~busy):
                m.d.sync += phase.eq(0)
        with m.Elif(done):
            m.d.sync += busy.eq(0)                  # tx is already 1 (the stop bit)
        with m.Elif(busy & tick):
            m.d.sync += [tx.eq(shift[0]), shift.eq(shift >> 1), left.eq(left - 1)]
        return m


class UARTRx(_UARTBase):
    """8N1 receiver.

    ``rx`` passes a two-flip-flop synchroniser. A falling edge of the synchronised line starts a
    frame; the phase is set so that the bit clock ticks at the middle of each bit. The start bit is
    checked at its middle (a low glitch shorter than about half a bit is no start: the receiver goes
    back to idle), the eight data bits are sampled LSB first and the stop bit at its middle; after a
    frame the receiver waits for the next falling edge (a line held low after a bad stop bit gives
    one ``frame_error``, not a stream of them).

    ``data`` holds a received byte (``valid`` stays high until it is taken). ``frame_error`` pulses
    for one clock when the stop bit is 0, ``overrun`` when a byte completes while the previous one
    is still untaken; in both cases the new byte is dropped. Both pulses are registered, one clock
    after the stop-bit sample.
    """

    def __init__(self, clk_freq, baud):
        super().__init__(clk_freq, baud, {
            "rx": In(1, init=1),
            "data": Out(stream.Signature(8)),
            "frame_error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, q = self._period.numerator, self._period.denominator
        phase, tick, step = self._phase(m, "rx")

        meta = Signal(init=1)
        line = Signal(init=1)                       # synchronised rx
        prev = Signal(init=1)
        m.d.sync += [meta.eq(self.rx), line.eq(meta), prev.eq(line)]

        busy = Signal()
        bit = Signal(range(10))                     # 0 start, 1..8 data, 9 stop
        shift = Signal(8)

        m.d.sync += [self.frame_error.eq(0), self.overrun.eq(0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.If(~busy):
            with m.If(prev & ~line):
                # The edge is seen ~2 clocks late (synchroniser); starting the phase just past
                # half-way puts the first tick at the middle of the start bit.
                m.d.sync += [busy.eq(1), bit.eq(0), phase.eq((p + q) // 2)]
        with m.Else():
            m.d.sync += phase.eq(step)
            with m.If(tick):
                m.d.sync += bit.eq(bit + 1)
                with m.If(bit == 0):
                    with m.If(line):
                        m.d.sync += busy.eq(0)      # glitch, not a start bit
                with m.Elif(bit != 9):
                    m.d.sync += shift.eq(Cat(shift[1:], line))
                with m.Else():
                    m.d.sync += busy.eq(0)
                    with m.If(~line):
                        m.d.sync += self.frame_error.eq(1)
                    with m.Elif(self.data.valid & ~self.data.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.data.valid.eq(1), self.data.payload.eq(shift)]
        return m
