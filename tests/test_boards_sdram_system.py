"""boards.sdram_system: the engine training through the SDRAM controller and the checking chip model.

The small convolutional network of tests/test_hw_engine.py with its input batch, E0 and the W1
weights outside (CONV_SPILL_CONFIG) trains two steps with the board's SDRAM behind the port instead
of the generic memory model: every activation, mask, pool index, error and weight equals the
word-level model and golden, and the chip model saw no timing violation.

Every command on the port addresses the engine's external words: the padding beats of its patterns
(a CONV_ERR tap left of or above an on-chip tensor at data address 0 wraps to 2**24 - k) are read
on chip, never sent to the port (hw.engine.feeder.PatternReader). Pinned down on the training run's
port commands. Were such a read sent, the controller would serve it modulo its address range,
opening a row beyond the engine's words: pinned down on one such read through the controller. The
system's chip model (boards.sdram_system.sdram_chip_model with the engine's words) stores only the
rows of those words, so such a read would fail the training test as NOT_STORED.
"""

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

import tests.test_hw_engine
from boards.sdram import SDRAMController, SDRAMTiming, connect_engine_port, engine_sdram
from boards.sdram_model import SDRAMModel, SDRAMViolation
from boards.sdram_system import EngineSDRAMSystem, register_sdram_pins, sdram_chip_model
from boards.top import SDRAM_READ_DELAY
from hw.engine.compiler import Placement
from hw.engine.conv import ConvOp
from hw.engine.extmem import ExternalMemorySignature
from hw.engine.isa import ADDR_BITS
from tests.test_hw_engine import CONV_CONFIG, CONV_SPILL_CONFIG, conv_mismatches, run_conv_steps

def sdram_row(controller, word):
    """The row (across the banks) of a word's first column, after the port keeps the controller's
    address bits (the weights' narrow words and the bank interleave included:
    :meth:`boards.sdram.SDRAMController.beat_address`, :meth:`~boards.sdram.SDRAMController.beat_location`)."""
    return controller.beat_location(controller.beat_address(word % (1 << controller.addr_bits)))[1]


class RecordingSimulator(Simulator):
    """tests.test_hw_engine.simulate's simulator, also recording every command the engine's port
    hands to the controller as (engine address, count, write) in ``dut.port_commands``."""

    def __init__(self, dut):
        super().__init__(dut)
        dut.port_commands = []
        cmd = dut.engine.ext.cmd

        async def record(ctx):
            async for _, _, valid, ready, addr, count, write in ctx.tick().sample(
                    cmd.valid, cmd.ready, cmd.payload.addr, cmd.payload.count, cmd.payload.write):
                if valid and ready:
                    dut.port_commands.append((addr, count, write))

        self.add_process(record)


def run_sdram_steps(config, placement=None, sdram_freq=None):
    """run_conv_steps with the SDRAM system behind the port (the engine at 50 MHz, the SDRAM at
    ``sdram_freq``, default the same clock): (program, got, want, system)."""
    systems = []

    def system(config):
        systems.append(EngineSDRAMSystem(config, clk_freq=50e6, sdram_freq=sdram_freq))
        return systems[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tests.test_hw_engine, "Simulator", RecordingSimulator)
        return (*run_conv_steps(config, system, placement), systems[0])


@pytest.fixture(scope="module")
def sdram_steps():
    return run_sdram_steps(CONV_SPILL_CONFIG)


@pytest.fixture(scope="module")
def own_clock_steps():
    # 93.75 MHz: 1.875 SDRAM cycles per engine cycle, so the two clocks' edges drift past each other
    return run_sdram_steps(CONV_SPILL_CONFIG, sdram_freq=93.75e6)


# E0 (108 words) spills whole under first fit and so lands in the error region, kept narrow
ERROR_REGION_CONFIG = CONV_SPILL_CONFIG.replace(external_error_words=512)


@pytest.fixture(scope="module")
def error_region_steps():
    return run_sdram_steps(ERROR_REGION_CONFIG, Placement())


def test_spilled_tensors_train_bit_exactly_through_the_sdram(sdram_steps):
    program, got, want, system = sdram_steps
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0], f"the SDRAM model flagged {[got[s].get('ext_fault_code') for s in range(2)]}"
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["ext_read_words"] > c0["ext_read_words"] > 0 and c1["ext_write_words"] > c0["ext_write_words"]
    assert system.model.stored_row_bits == 1    # 1,280 words x 3 columns = 3,840: rows 0-1 of 4 x 512


def test_one_wrong_bit_through_the_sdram_is_caught(sdram_steps):
    program, got, want, _ = sdram_steps
    bad = {**want[1], "E0": want[1]["E0"].copy()}
    bad["E0"][2, 3] ^= 1
    assert conv_mismatches(got[1], bad) == ["E0"]


def test_the_sdram_on_its_own_clock_trains_bit_exactly(own_clock_steps, sdram_steps):
    """The SDRAM side in the domain ``sdram`` at 93.75 MHz behind the port's clock crossing, the
    engine at 50 MHz: both steps equal the model and golden, no timing violation at the SDRAM's
    clock (the controller's timing in its own cycles), and the same words
    through the port as with one clock (its bursts may differ: a burst closes when the next word
    is late)."""
    program, got, want, system = own_clock_steps
    assert system.domain_freqs == {"sync": 50e6, "sdram": 93.75e6}
    assert system.controller.cycles == SDRAMTiming().cycles(93.75e6) != sdram_steps[3].controller.cycles
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    words = lambda commands, write: sum(count for _, count, w in commands if w == write)
    assert [words(system.port_commands, w) for w in (0, 1)] == [words(sdram_steps[3].port_commands, w) for w in (0, 1)]
    for s in range(2):
        for count in ("ext_read_words", "ext_write_words"):
            assert got[s]["counters"][count] == sdram_steps[1][s]["counters"][count]


def test_errors_in_the_narrow_error_region_train_bit_exactly(error_region_steps):
    """With an error region E0 lives in the controller's narrow region (2 columns a word, not 3)
    and both steps still equal the model and golden; no port command crosses a region boundary
    (the controller sizes a command by its first word's region)."""
    program, got, want, system = error_region_steps
    cfg, controller = ERROR_REGION_CONFIG, system.controller
    e0 = next(e for e in program.errors if e.name == "E0")
    assert cfg.data_words + cfg.external_error_base <= e0.base and e0.end <= cfg.data_space
    assert (controller.narrow_start, controller.narrow_words) == (512, 512 + 256)
    assert controller.word_beats(cfg.external_error_base) == 2 < controller.word_beats(0) == 3     # 4 lanes
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    bounds = (controller.narrow_start, controller.narrow_start + controller.narrow_words)
    commands = system.port_commands
    assert any(bounds[0] <= addr < cfg.external_words and write for addr, _, write in commands)    # E0's
    crossing = [(addr, count) for addr, count, _ in commands for bound in bounds if addr < bound < addr + count]
    assert crossing == []


def test_a_narrow_region_dropping_a_column_of_errors_is_caught(monkeypatch):
    """The check above can fail: a controller that keeps one column fewer of the error region's
    words (the top two lanes read as 0; the weights' words whole) trains wrong."""
    import boards.sdram_system

    def column_short(config, clk_freq, read_delay=0):
        right = engine_sdram(config, clk_freq, read_delay=read_delay)
        return SDRAMController(config.external_width, right.addr_bits, clk_freq, read_delay=read_delay,
                               narrow_start=right.narrow_start, narrow_words=config.external_error_words,
                               narrow_width=8 * config.lanes - 16, bank_interleave=right.bank_interleave,
                               bank_hash=right.bank_hash)
    monkeypatch.setattr(boards.sdram_system, "engine_sdram", column_short)
    program, got, want, _ = run_sdram_steps(ERROR_REGION_CONFIG, Placement())
    assert "E0" in conv_mismatches(got[0], want[0])


def test_a_configuration_without_external_words_is_refused():
    with pytest.raises(ValueError, match="must be an EngineConfig with external words"):
        EngineSDRAMSystem(CONV_CONFIG, clk_freq=50e6)


@pytest.mark.parametrize("kw, message", [({"sdram_freq": 0}, "sdram_freq=0: must be a clock frequency in Hz"),
                                         ({"sdram_freq": "fast"}, "sdram_freq='fast': must be a clock"),
                                         ({"clk_freq": -5e7}, "clk_freq=-50000000.0: must be a clock"),
                                         ({"sdram_freq": 200e6}, "above the part's maximum clock")])
def test_bad_clocks_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        EngineSDRAMSystem(CONV_SPILL_CONFIG, **{"clk_freq": 50e6, **kw})


def test_no_port_command_leaves_the_engine_words(sdram_steps):
    """The port commands of the training run stay in the engine's 1,280 words, reads as well as
    writes. CONV_ERR's padding taps of E1 (data 0..5, on chip) at data addresses -8..-1 would be
    external words 2**24 - 72 .. 2**24 - 65 (the controller keeps 11 address bits: words
    1,976..1,983, row 2, beyond rows 0-1 of the 1,280 words); they are read on chip instead."""
    program, got, want, system = sdram_steps
    cfg = CONV_SPILL_CONFIG
    depth, beats = cfg.external_depth, system.controller.beats
    addr_bits = len(system.controller.port.cmd.payload.addr)
    commands = system.port_commands
    assert (depth, beats, addr_bits) == (1280, 3, 11)
    assert any(not write for _, _, write in commands) and any(write for _, _, write in commands)
    assert [(addr, count, write) for addr, count, write in commands if addr + count > depth] == []
    assert sdram_row(system.controller, depth - 1) == 1     # the engine's words end in row 1
    assert {sdram_row(system.controller, addr + count - 1) for addr, count, _ in commands} <= {0, 1}
    # the padding taps the run would otherwise have sent do exist in the program
    conv_err = [ins for ins in program.instructions if ins.op == ConvOp.CONV_ERR]
    padding = {addr - cfg.data_words for ins in conv_err for addr, valid in ins.a.addresses()
               if not valid and addr >= cfg.data_words}
    assert padding == set(range((1 << ADDR_BITS) - 72, (1 << ADDR_BITS) - 64))
    assert {word % (1 << addr_bits) for word in padding} == set(range(1976, 1984))
    assert {sdram_row(system.controller, word) for word in padding} == {2}


@pytest.mark.parametrize("whole_range", [True, False], ids=["whole-range", "engine-rows"])
def test_a_padding_read_opens_a_row_beyond_the_engine_words(whole_range):
    """One read of external word 2**24 - 66 (CONV_ERR's tap at data address -2) through
    connect_engine_port and the controller for CONV_SPILL_CONFIG: it is served (any data) after an
    ACTIVE of row 2 in the bank the controller's map gives (bank 2 in the engine's map: bank bits 0
    of the 64-column interleave XOR the row's low bits); a chip model storing only the rows of the
    1,280 words (0-1) flags it NOT_STORED, sdram_chip_model without a word count (the controller's whole range) does not."""
    cfg = CONV_SPILL_CONFIG
    controller = engine_sdram(cfg, 50e6, read_delay=SDRAM_READ_DELAY)
    if whole_range:
        model = sdram_chip_model(controller, 50e6)
        assert model.stored_row_bits == 2
    else:
        model = SDRAMModel(SDRAMTiming().cycles(50e6), stored_row_bits=1)
    ext = ExternalMemorySignature(ADDR_BITS, cfg.external_width).create()
    m = Module()
    m.submodules.controller, m.submodules.model = controller, model
    connect_engine_port(m, ext, controller.port)
    register_sdram_pins(m, controller.pins, model.pins)
    result = {}

    async def bench(ctx):
        while not ctx.get(controller.ready):
            await ctx.tick()
        ctx.set(ext.cmd.payload, {"addr": (1 << ADDR_BITS) - 66, "count": 1, "write": 0})
        ctx.set(ext.cmd.valid, 1)
        await ctx.tick().until(ext.cmd.ready)
        ctx.set(ext.cmd.valid, 0)
        ctx.set(ext.r.ready, 1)
        activates, words = [], 0
        for _ in range(40):
            _, _, cs_n, ras_n, cas_n, we_n, ba, a, r_valid = await ctx.tick().sample(
                controller.pins.cs_n, controller.pins.ras_n, controller.pins.cas_n, controller.pins.we_n,
                controller.pins.ba, controller.pins.a, ext.r.valid)
            if not cs_n and not ras_n and cas_n and we_n:
                activates.append((ba, a))
            words += r_valid
        result.update(activates=activates, words=words, code=ctx.get(model.violation_code))

    sim = Simulator(m)
    sim.add_clock(2e-8)
    sim.add_testbench(bench)
    sim.run()
    bank, row, _ = controller.beat_location(controller.beat_address((1 << ADDR_BITS) - 66 & 2047))
    assert (bank, row) == (2, 2)
    assert result["activates"] == [(bank, row)] and result["words"] == 1
    assert result["code"] == (SDRAMViolation.NONE if whole_range else SDRAMViolation.NOT_STORED)


def test_command_counters_count_each_command_and_each_read_to_write_turn():
    """SDRAMCommandCounters (the benchmark's account of the SDRAM's cycles) on a hand-made pin
    sequence: deselected cycles (cs_n high) and NOPs count as nothing; a WRITE counts as a turn
    only right after a READ column command, however many NOPs lie between."""
    from boards.sdram import COMMANDS
    from boards.sdram_system import SDRAM_COUNTS, SDRAMCommandCounters
    sequence = ["ACTIVE", "READ", "READ", "NOP", "WRITE", "WRITE", "READ", "NOP", "NOP", "WRITE",
                "PRECHARGE", "DESELECT", "ACTIVE", "READ", "AUTO_REFRESH", "LOAD_MODE", "WRITE"]
    want = {"reads": 4, "writes": 4, "activates": 2, "precharges": 1, "read_to_write": 3}
    dut = SDRAMCommandCounters()
    got = {}

    async def bench(ctx):
        for name in sequence:
            ras, cas, we = COMMANDS.get(name, COMMANDS["ACTIVE"])    # DESELECT: an ACTIVE's pins, cs_n high
            for pin, value in (("cs_n", int(name == "DESELECT")), ("ras_n", ras), ("cas_n", cas), ("we_n", we)):
                ctx.set(getattr(dut, pin), value)
            await ctx.tick()
        got.update({name: ctx.get(getattr(dut, name)) for name in SDRAM_COUNTS})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
