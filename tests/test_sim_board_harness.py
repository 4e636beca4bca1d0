"""sim.board_harness: the host's UART, byte FIFOs and line glitches around a board, in Amaranth's simulator.

The board here is a wire (``tx`` = ``rx``) with one extra port each way, so every byte the peer
sends must come back unchanged; a glitch must damage what comes back, and a receive FIFO left
unread must raise the overflow flag.
"""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from sim.board_harness import UARTPeerHarness

CLK, BAUD = 8_000_000, 1_000_000                      # 8 clocks per bit, 80 per byte


class Echo(wiring.Component):
    rx: In(1, init=1)
    tx: Out(1, init=1)
    knob: In(3)
    shown: Out(3)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.tx.eq(self.rx), self.shown.eq(self.knob + 1)]
        return m


def run(data, *, glitch_at=None, read=True, depth=16, cycles=None):
    dut = UARTPeerHarness(Echo(), clk_freq=CLK, baud=BAUD, fifo_depth=depth)
    got, seen = [], {}

    async def bench(ctx):
        ctx.set(dut.knob, 5)
        ctx.set(dut.peer_rx.ready, int(read))
        sent = 0
        for cycle in range(cycles or 80 * (len(data) + 4)):
            if sent < len(data) and ctx.get(dut.peer_tx.ready):
                ctx.set(dut.peer_tx.valid, 1)
                ctx.set(dut.peer_tx.payload, data[sent])
            else:
                ctx.set(dut.peer_tx.valid, 0)
            ctx.set(dut.rx_glitch, int(glitch_at is not None and glitch_at <= cycle < glitch_at + 8))
            if ctx.get(dut.peer_tx.valid) and ctx.get(dut.peer_tx.ready):
                sent += 1
            if read and ctx.get(dut.peer_rx.valid):
                got.append(ctx.get(dut.peer_rx.payload))
            await ctx.tick()
        seen.update(shown=ctx.get(dut.shown), errors=ctx.get(dut.peer_rx_frame_errors),
                    overflow=ctx.get(dut.peer_rx_overflow), rx_level=ctx.get(dut.peer_rx_level))

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(bench)
    sim.run()
    return got, seen


def test_bytes_go_round_the_line_and_ports_pass_through():
    data = [0x00, 0xFF, 0xA5, 0x5A, 0x01, 0x80, 0x3C]
    got, seen = run(data)
    assert got == data
    assert seen == {"shown": 6, "errors": 0, "overflow": 0, "rx_level": 0}


def test_a_glitch_damages_the_byte_it_hits():
    data = [0x55] * 6
    got, seen = run(data, glitch_at=3 * 80 + 30)          # a bit inverted in the middle of the 3rd-4th byte
    assert got != data
    assert got[:2] == data[:2]


def test_an_unread_receive_fifo_overflows():
    got, seen = run(list(range(10)), read=False, depth=4)
    assert seen["overflow"] == 1 and seen["rx_level"] == 4


def test_a_board_without_serial_pins_is_refused():
    class NoPins(wiring.Component):
        led: Out(1)

        def elaborate(self, platform):
            return Module()

    with pytest.raises(ValueError, match=r"has no 'rx' port"):
        UARTPeerHarness(NoPins(), clk_freq=CLK, baud=BAUD)
