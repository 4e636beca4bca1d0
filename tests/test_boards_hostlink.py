"""boards.hostlink: the UART host link against a bit-level Python peer on its pins (8 clocks per bit)."""

import random

import pytest
from amaranth.sim import Simulator

from boards.framing import PacketDecoder, encode_packet
from boards.hostlink import UARTHostLink
from tests.support import seed_for

CLK, BAUD = 8_000_000, 1_000_000
R = CLK // BAUD                                               # clocks per bit


def uart_wave(data, rng, stop_bits=None, gap_p=0.3):
    """Line level per clock for ``data`` sent 8N1 at exactly R clocks per bit, with random gaps."""
    wave = [1] * 10
    for i, byte in enumerate(data):
        if rng.random() < gap_p:
            wave += [1] * rng.randrange(1, 3 * R)
        stop = 1 if stop_bits is None else stop_bits[i]
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [stop]:
            wave += [bit] * R
        if not stop:
            wave += [1] * R
    return wave + [1] * (2 * R)


class LinePeer:
    """Decodes the link's ``tx`` pin clock by clock: a falling edge starts a frame, bits are read at
    their middles; a 0 stop bit is recorded as a framing fault."""

    def __init__(self):
        self.bytes, self.faults = bytearray(), []
        self._prev, self._start, self.cycle = 1, None, 0

    def sample(self, level):
        c = self.cycle
        if self._start is None:
            if self._prev and not level:
                self._start, self._bits = c, []
        else:
            k, rem = divmod(c - self._start, R)
            if rem == R // 2:
                self._bits.append(level)
                if k == 9:
                    if self._bits[0] != 0 or self._bits[9] != 1:
                        self.faults.append(c)
                    self.bytes.append(sum(b << i for i, b in enumerate(self._bits[1:9])))
                    self._start = None
        self._prev = level
        self.cycle += 1


def make_link(activity_cycles=64):
    return UARTHostLink(CLK, BAUD, activity_cycles=activity_cycles)


def test_packets_both_ways_through_the_pins():
    rng = random.Random(seed_for("hostlink-both-ways"))
    dut = make_link()
    to_fpga = [[rng.randrange(1 << 32) for _ in range(n)] for n in [1, 3, 7, 2]]
    to_host = [[rng.randrange(1 << 32) for _ in range(n)] for n in [2, 1, 9, 3]]
    wave = uart_wave(b"".join(encode_packet(p) for p in to_fpga), rng)
    host_bytes = sum(len(encode_packet(p)) for p in to_host)
    received, peer, status = [], LinePeer(), {"error": 0, "rx_active": 0, "tx_active": 0}

    async def host_sends(ctx):
        for level in wave:
            ctx.set(dut.rx, level)
            await ctx.tick()

    async def host_listens(ctx):
        for _ in range(host_bytes * 10 * R + 4000):
            if len(peer.bytes) == host_bytes and len(received) == sum(map(len, to_fpga)):
                break
            _, _, tx, err, rxa, txa = await ctx.tick().sample(dut.tx, dut.error, dut.rx_active, dut.tx_active)
            peer.sample(tx)
            status["error"] |= err
            status["rx_active"] |= rxa
            status["tx_active"] |= txa

    async def engine_reads(ctx):
        while True:
            ctx.set(dut.to_engine.ready, rng.random() < 0.5)
            _, _, valid, ready, payload = await ctx.tick().sample(
                dut.to_engine.valid, dut.to_engine.ready, dut.to_engine.payload)
            if valid and ready:
                received.append((payload.data, payload.last))

    async def engine_writes(ctx):
        for p in to_host:
            for i, w in enumerate(p):
                while rng.random() < 0.3:
                    ctx.set(dut.from_engine.valid, 0)
                    await ctx.tick()
                ctx.set(dut.from_engine.valid, 1)
                ctx.set(dut.from_engine.payload, {"data": w, "last": i == len(p) - 1})
                await ctx.tick().until(dut.from_engine.ready)
        ctx.set(dut.from_engine.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(host_sends, background=True)
    sim.add_testbench(host_listens)
    sim.add_testbench(engine_reads, background=True)
    sim.add_testbench(engine_writes, background=True)
    sim.run()

    assert received == [(w, i == len(p) - 1) for p in to_fpga for i, w in enumerate(p)]
    assert peer.faults == []
    assert PacketDecoder().feed(bytes(peer.bytes)) == to_host
    assert status == {"error": 0, "rx_active": 1, "tx_active": 1}


def run_bad_input(data, stop_bits, activity_cycles=64):
    """Send ``data`` (to_engine always ready); return per-clock (error, rx_active) and the words."""
    rng = random.Random(seed_for("hostlink-bad-input"))
    dut = make_link(activity_cycles)
    wave = uart_wave(data, rng, stop_bits, gap_p=0.0) + [1] * (activity_cycles + 20)
    trace, words = [], []

    async def bench(ctx):
        ctx.set(dut.to_engine.ready, 1)
        for level in wave:
            ctx.set(dut.rx, level)
            _, _, err, rxa, valid, payload = await ctx.tick().sample(
                dut.error, dut.rx_active, dut.to_engine.valid, dut.to_engine.payload)
            trace.append((err, rxa))
            if valid:
                words.append((payload.data, payload.last))

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(bench)
    sim.run()
    return trace, words


def test_error_goes_high_on_a_bad_stop_bit_and_stays():
    good = encode_packet([0x01020304])
    data = good + bytes([0x99]) + good
    stops = [1] * len(good) + [0] + [1] * len(good)
    trace, words = run_bad_input(data, stops)
    errors = [e for e, _ in trace]
    first = errors.index(1)
    assert first > len(good) * 10 * R                             # not before the bad byte
    assert first < (len(good) + 1) * 10 * R + 2 * R
    assert all(errors[first:])                                    # sticky
    assert words == [(0x01020304, 1), (0x01020304, 1)]            # the bad byte was dropped, no harm done


def test_error_goes_high_on_a_bad_chunk_header():
    trace, words = run_bad_input(bytes([0, 1]) + encode_packet([7]), None)
    assert trace[-1][0] == 1 and words == [(7, 1)]


def test_rx_activity_is_stretched_and_falls_back():
    activity = 200
    trace, _ = run_bad_input(encode_packet([5]), None, activity_cycles=activity)
    active = [a for _, a in trace]
    assert not active[0]
    assert not any(active[-10:])                                  # off again once the link is quiet
    on = [i for i, a in enumerate(active) if a]
    assert on[-1] - on[0] >= 5 * 10 * R + activity                 # from the first byte to the stretch after the sixth
    assert all(active[on[0]:on[-1] + 1])


def test_parameters_validated():
    with pytest.raises(ValueError, match=r"activity_cycles=0"):
        UARTHostLink(CLK, BAUD, activity_cycles=0)
    with pytest.raises(TypeError, match=r"activity_cycles=1\.5"):
        UARTHostLink(CLK, BAUD, activity_cycles=1.5)
    with pytest.raises(ValueError, match=r"clk_freq=8000000, baud=2000000: clk_freq/baud = 4"):
        UARTHostLink(CLK, 2 * BAUD)
    link = UARTHostLink(50e6, 3_000_000)
    link._MustUse__silence = True                                 # inspected, not elaborated
    assert (link.clk_freq, link.baud, link.activity_cycles) == (50e6, 3_000_000, 1 << 20)
    assert "UARTHostLink(clk_freq=50000000.0, baud=3000000" in repr(link)
