"""boards.uart: 8N1 transmitter and receiver with phase-accumulator bit timing."""

import math
import random
from fractions import Fraction

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from boards.uart import UARTRx, UARTTx
from tests.support import seed_for

# (clk_freq, baud): 16.67, 8 and 10.5 clocks per bit
RATIOS = [(50e6, 3_000_000), (8_000_000, 1_000_000), (21_000_000, 2_000_000)]


class Loopback(wiring.Component):
    def __init__(self, clk_freq, baud):
        self.utx = UARTTx(clk_freq, baud)
        self.urx = UARTRx(clk_freq, baud)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.utx, m.submodules.urx = self.utx, self.urx
        m.d.comb += self.urx.rx.eq(self.utx.tx)
        return m


def frame_bits(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


@pytest.mark.parametrize("clk_freq,baud", RATIOS)
def test_loopback_random_bytes_with_stalls(clk_freq, baud):
    rng = random.Random(seed_for(f"uart-loopback-{clk_freq}-{baud}"))
    dut = Loopback(clk_freq, baud)
    sent = [rng.randrange(256) for _ in range(40)]
    got, errors = [], []

    async def producer(ctx):
        for b in sent:
            if rng.random() < 0.3:                       # sometimes idle for a while between bytes
                ctx.set(dut.utx.data.valid, 0)
                await ctx.tick().repeat(rng.randrange(1, 40))
            ctx.set(dut.utx.data.valid, 1)
            ctx.set(dut.utx.data.payload, b)
            await ctx.tick().until(dut.utx.data.ready)
        ctx.set(dut.utx.data.valid, 0)

    async def consumer(ctx):
        while len(got) < len(sent):
            ctx.set(dut.urx.data.ready, rng.random() < 0.3)
            _, _, valid, ready, payload, fe, ov = await ctx.tick().sample(
                dut.urx.data.valid, dut.urx.data.ready, dut.urx.data.payload, dut.urx.frame_error, dut.urx.overrun)
            if valid and ready:
                got.append(payload)
            if fe or ov:
                errors.append((fe, ov))

    sim = Simulator(dut)
    sim.add_clock(1 / clk_freq)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(len(sent) * 12 * clk_freq / baud / clk_freq + 2000 / clk_freq)
    assert got == sent
    assert errors == []


def reference_waveform(frames, clocks_per_bit, rng, lead=20):
    """Line level per clock for frames of (byte, stop bit) sent at ``clocks_per_bit`` (any real),
    with random idle gaps (at least a bit after a bad stop bit) and a random sub-clock phase."""
    wave = [1] * lead
    t = float(lead) + rng.random()
    for byte, stop in frames:
        bits = frame_bits(byte, stop)
        end = t + 10 * clocks_per_bit
        while len(wave) < math.ceil(end):
            wave.append(bits[min(9, int((len(wave) - t) // clocks_per_bit))] if len(wave) >= t else 1)
        t = end
        gap = rng.choice([0, 0, rng.random() * 3 * clocks_per_bit])
        if stop == 0:
            gap += clocks_per_bit
        t += gap
    wave += [1] * int(2 * clocks_per_bit + 10)
    return wave


def run_rx(clk_freq, baud, wave, rng, ready_p=0.5):
    dut = UARTRx(clk_freq, baud)
    got, frame_errors, overruns = [], [], []

    async def driver(ctx):
        for level in wave:
            ctx.set(dut.rx, level)
            await ctx.tick()

    async def consumer(ctx):
        cycle = 0
        while True:
            ctx.set(dut.data.ready, rng.random() < ready_p)
            _, _, valid, ready, payload, fe, ov = await ctx.tick().sample(
                dut.data.valid, dut.data.ready, dut.data.payload, dut.frame_error, dut.overrun)
            if valid and ready:
                got.append(payload)
            if fe:
                frame_errors.append(cycle)
            if ov:
                overruns.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1 / clk_freq)
    sim.add_testbench(driver)
    sim.add_testbench(consumer, background=True)
    sim.run()
    return got, frame_errors, overruns


@pytest.mark.parametrize("clk_freq,baud", [RATIOS[0], RATIOS[1]])
@pytest.mark.parametrize("skew", [-0.02, 0.0, 0.02])
def test_rx_against_reference_driver_with_baud_skew(clk_freq, baud, skew):
    rng = random.Random(seed_for(f"uart-rx-{clk_freq}-{baud}-{skew}"))
    frames = [(rng.randrange(256), 1) for _ in range(24)] + [(0x00, 1), (0xFF, 1), (0x55, 1), (0xAA, 1)]
    wave = reference_waveform(frames, clk_freq / baud / (1 + skew), rng)
    got, frame_errors, overruns = run_rx(clk_freq, baud, wave, rng)
    assert got == [b for b, _ in frames]
    assert frame_errors == [] and overruns == []


@pytest.mark.parametrize("clk_freq,baud", [RATIOS[0], RATIOS[1]])
def test_rx_zero_stop_bit_pulses_frame_error_and_drops_the_byte(clk_freq, baud):
    rng = random.Random(seed_for(f"uart-rx-stop-{clk_freq}-{baud}"))
    frames = [(rng.randrange(256), 0 if rng.random() < 0.3 else 1) for _ in range(20)] + [(0x3C, 0), (0xC3, 1)]
    wave = reference_waveform(frames, clk_freq / baud, rng)
    got, frame_errors, overruns = run_rx(clk_freq, baud, wave, rng)
    assert got == [b for b, stop in frames if stop]
    assert len(frame_errors) == sum(1 for _, stop in frames if not stop)
    assert all(b - a > 1 for a, b in zip(frame_errors, frame_errors[1:]))     # one-clock pulses
    assert overruns == []


def test_rx_overrun_pulses_and_keeps_the_first_byte():
    rng = random.Random(seed_for("uart-rx-overrun"))
    clk_freq, baud = RATIOS[1]
    frames = [(0x12, 1), (0x34, 1), (0x56, 1)]
    wave = reference_waveform(frames, clk_freq / baud, rng)
    got, frame_errors, overruns = run_rx(clk_freq, baud, wave, rng, ready_p=0.0)     # never taken
    assert got == [] and frame_errors == [] and len(overruns) == 2

    dut = UARTRx(clk_freq, baud)

    async def bench(ctx):
        for level in wave:
            ctx.set(dut.rx, level)
            await ctx.tick()
        assert ctx.get(dut.data.valid) and ctx.get(dut.data.payload) == 0x12
        ctx.set(dut.data.ready, 1)
        await ctx.tick()
        assert not ctx.get(dut.data.valid)

    sim = Simulator(dut)
    sim.add_clock(1 / clk_freq)
    sim.add_testbench(bench)
    sim.run()


def test_rx_line_held_low_gives_one_frame_error_then_recovers():
    clk_freq, baud = RATIOS[1]
    rng = random.Random(seed_for("uart-rx-break"))
    wave = [1] * 20 + [0] * (30 * 8) + [1] * 12 + reference_waveform([(0x5A, 1)], clk_freq / baud, rng)
    got, frame_errors, overruns = run_rx(clk_freq, baud, wave, rng, ready_p=1.0)
    assert got == [0x5A] and len(frame_errors) == 1 and overruns == []


def test_rx_ignores_a_glitch_shorter_than_half_a_bit():
    clk_freq, baud = 50e6, 3_000_000                       # 16.67 clocks per bit
    rng = random.Random(seed_for("uart-rx-glitch"))
    wave = [1] * 20 + [0] * 6 + [1] * 40 + reference_waveform([(0xA5, 1)], clk_freq / baud, rng)
    got, frame_errors, overruns = run_rx(clk_freq, baud, wave, rng, ready_p=1.0)
    assert got == [0xA5] and frame_errors == [] and overruns == []


@pytest.mark.parametrize("clk_freq,baud", RATIOS)
def test_tx_waveform_bit_by_bit(clk_freq, baud):
    rng = random.Random(seed_for(f"uart-tx-wave-{clk_freq}-{baud}"))
    dut = UARTTx(clk_freq, baud)
    period = dut.period
    assert abs(float(period) - clk_freq / baud) < 1e-9 * clk_freq / baud
    bursts = [[rng.randrange(256) for _ in range(rng.randint(1, 4))] for _ in range(3)]
    cycles = 20 + sum(len(b) * 10 * clk_freq / baud + 30 for b in bursts) + 60
    tx, busy, takes = [], [], []

    async def producer(ctx):
        for burst in bursts:
            ctx.set(dut.data.valid, 0)
            await ctx.tick().repeat(rng.randrange(1, 30))
            await ctx.tick().until(~dut.busy)
            for b in burst:                                   # back to back
                ctx.set(dut.data.valid, 1)
                ctx.set(dut.data.payload, b)
                await ctx.tick().until(dut.data.ready)
            ctx.set(dut.data.valid, 0)

    async def monitor(ctx):
        for cycle in range(int(cycles)):
            _, _, t, bz, valid, ready = await ctx.tick().sample(dut.tx, dut.busy, dut.data.valid, dut.data.ready)
            tx.append(t)
            busy.append(bz)
            if valid and ready:
                takes.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1 / clk_freq)
    sim.add_testbench(producer)
    sim.add_testbench(monitor)
    sim.run()

    expected, expected_busy = [1] * len(tx), [0] * len(tx)
    i = 0
    for burst in bursts:
        start = takes[i]                                       # taken from idle: the phase starts at 0
        bits = [bit for b in burst for bit in frame_bits(b)]
        for k, bit in enumerate(bits):
            lo = start + 1 + math.ceil(k * period)
            hi = start + 1 + math.ceil((k + 1) * period)
            assert abs((lo - start - 1) - k * clk_freq / baud) < 1        # exact on average
            expected[lo:hi] = [bit] * (hi - lo)
            expected_busy[lo:hi] = [1] * (hi - lo)
        for j in range(len(burst)):                            # later bytes taken as a stop bit ends
            assert takes[i + j] == start + math.ceil(10 * j * period)
        i += len(burst)
    assert i == len(takes)
    assert tx == expected
    assert busy == expected_busy


@pytest.mark.parametrize("cls", [UARTTx, UARTRx])
def test_bad_parameters_raise_naming_the_value(cls):
    with pytest.raises(ValueError, match=r"clk_freq=50000000\.0, baud=7000000: clk_freq/baud = 7\.14"):
        cls(50e6, 7_000_000)
    with pytest.raises(ValueError, match=r"clk_freq=0"):
        cls(0, 9600)
    with pytest.raises(ValueError, match=r"clk_freq=-1"):
        cls(-1.0, 9600)
    with pytest.raises(TypeError, match=r"clk_freq='fast'"):
        cls("fast", 9600)
    with pytest.raises(ValueError, match=r"baud=0"):
        cls(50e6, 0)
    with pytest.raises(TypeError, match=r"baud=9600\.5"):
        cls(50e6, 9600.5)
    with pytest.raises(TypeError, match=r"baud=True"):
        cls(50e6, True)
    ok = cls(50e6, 3_000_000)
    ok._MustUse__silence = True                                  # inspected, not elaborated
    assert ok.clk_freq == 50e6 and ok.baud == 3_000_000 and ok.period == Fraction(50, 3)
    assert repr(ok).startswith(f"{cls.__name__}(clk_freq=50000000.0, baud=3000000)")
    edge = cls(8_000_000, 1_000_000)                            # exactly 8 is allowed
    edge._MustUse__silence = True
    assert edge.period == 8
