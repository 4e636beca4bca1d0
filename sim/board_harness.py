"""Gateware around a board design for its Verilator bench: the host's UART, byte FIFOs, line glitches.

:class:`UARTPeerHarness` wraps a design with serial pins ``rx``/``tx`` (the board,
:class:`boards.board_system.BoardSDRAMSystem`) and gives the cocotb bench (``sim/tb_board.py``) the
host's side of the serial line at the byte level:

* ``peer_tx`` (bytes in) → FIFO → a :class:`boards.uart.UARTTx` → XOR ``rx_glitch`` → the board's ``rx``;
* the board's ``tx`` → XOR ``tx_glitch`` → a :class:`boards.uart.UARTRx` → FIFO → ``peer_rx`` (bytes out).

Python then touches signals once per byte, not once per bit clock (the UART runs 13–17 clocks a
bit), and waits with timers while bytes are on the line. ``peer_tx_level``/``peer_rx_level`` are
the FIFO fill levels; ``peer_rx_frame_errors`` counts bytes the host's receiver dropped for a bad
stop bit (a glitch on the ``tx`` line); ``peer_rx_overflow`` is sticky when the receive FIFO was full
(a bench that does not keep up). ``rx_glitch``/``tx_glitch`` invert the line while high: a
glitch over a frame flips bits (start and stop bits included), one on an idle line makes a byte
out of nothing. Every other port of the wrapped design is passed through under its own name.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from boards.uart import UARTRx, UARTTx

__all__ = ["UARTPeerHarness"]


class UARTPeerHarness(wiring.Component):
    def __init__(self, board: wiring.Component, *, clk_freq: float, baud: int, fifo_depth: int = 256):
        members = dict(board.signature.members)
        for name in ("rx", "tx"):
            if name not in members:
                self._MustUse__silence = board._MustUse__silence = True
                raise ValueError(f"board={board!r}: has no {name!r} port to put the UART peer on")
        del members["rx"], members["tx"]
        self.board, self.fifo_depth = board, fifo_depth
        self.host_tx, self.host_rx = UARTTx(clk_freq, baud), UARTRx(clk_freq, baud)
        self._passthrough = list(members)
        super().__init__({
            **members,
            "peer_tx": In(stream.Signature(8)),
            "peer_rx": Out(stream.Signature(8)),
            "peer_tx_level": Out(range(fifo_depth + 1)),
            "peer_rx_level": Out(range(fifo_depth + 1)),
            "peer_rx_frame_errors": Out(16),
            "peer_rx_overflow": Out(1),
            "rx_glitch": In(1),
            "tx_glitch": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.board = board = self.board
        m.submodules.host_tx = host_tx = self.host_tx
        m.submodules.host_rx = host_rx = self.host_rx
        m.submodules.tx_fifo = tx_fifo = SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        m.submodules.rx_fifo = rx_fifo = SyncFIFOBuffered(width=8, depth=self.fifo_depth)

        m.d.comb += [tx_fifo.w_data.eq(self.peer_tx.payload), tx_fifo.w_en.eq(self.peer_tx.valid),
                     self.peer_tx.ready.eq(tx_fifo.w_rdy), self.peer_tx_level.eq(tx_fifo.level),
                     host_tx.data.payload.eq(tx_fifo.r_data), host_tx.data.valid.eq(tx_fifo.r_rdy),
                     tx_fifo.r_en.eq(host_tx.data.ready)]
        m.d.comb += [board.rx.eq(host_tx.tx ^ self.rx_glitch), host_rx.rx.eq(board.tx ^ self.tx_glitch)]
        # the host's receiver never waits: a full FIFO would be a bench bug, caught by the overrun check
        m.d.comb += [rx_fifo.w_data.eq(host_rx.data.payload), rx_fifo.w_en.eq(host_rx.data.valid),
                     host_rx.data.ready.eq(1), self.peer_rx_level.eq(rx_fifo.level),
                     self.peer_rx.payload.eq(rx_fifo.r_data), self.peer_rx.valid.eq(rx_fifo.r_rdy),
                     rx_fifo.r_en.eq(self.peer_rx.ready)]
        with m.If(host_rx.data.valid & ~rx_fifo.w_rdy):
            m.d.sync += self.peer_rx_overflow.eq(1)
        errors = Signal(16)
        with m.If(host_rx.frame_error & (errors != 0xFFFF)):
            m.d.sync += errors.eq(errors + 1)
        m.d.comb += self.peer_rx_frame_errors.eq(errors)
        for name in self._passthrough:
            ours, theirs = getattr(self, name), getattr(board, name)
            if self.signature.members[name].flow == Out:
                m.d.comb += ours.eq(theirs)
            else:
                m.d.comb += theirs.eq(ours)
        return m
