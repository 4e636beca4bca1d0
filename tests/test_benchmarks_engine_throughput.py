"""benchmarks/engine_throughput.py: the pieces that run without a simulation (names, checks, the
traffic ceiling); the measurements themselves are the benchmark's."""

import importlib.util
import re
from pathlib import Path

import pytest

from golden.config import WageConfig
from hw.engine.config import EngineConfig
from hw.engine.system import ExternalTiming

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("engine_throughput", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIG = EngineConfig(WageConfig(net="lenet5", batch_size=16), lanes=8, data_words=8192, weight_words=8192,
                      external_words=65536, external_weight_words=65536, sum_words=1024, target="ecp5")


@pytest.mark.parametrize("timing, suffix", [
    (42.14, "_sdram42p14_ecp5"), (100.0, "_sdram100_ecp5"),
    (ExternalTiming(20, 1, 0), "_ext20_1_0_ecp5")])
def test_simulation_names_are_verilog_identifiers(bench, timing, suffix):
    """A fractional SDRAM clock once put a dot in the name, which the runner refuses."""
    name = bench.sim_name(CONFIG, timing)
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name == "engine_lenet5_b16_l8_s1024" + suffix


def test_names_differ_where_the_builds_differ(bench):
    on_chip = CONFIG.replace(external_words=0, external_weight_words=0, target="generic")
    assert bench.sim_name(on_chip) == "engine_lenet5_b16_l8_s1024"
    assert bench.sim_name(CONFIG, 42.14) != bench.sim_name(CONFIG, 42.0)
    assert bench.sim_name(CONFIG, 75.0, 37.5) == "engine_lenet5_b16_l8_s1024_sdram75_engine37p5_ecp5"


@pytest.mark.parametrize("mhz", ["0", "-5", "1e6"])
def test_a_bad_sdram_clock_is_named(bench, capsys, mhz):
    assert bench.main(["--memory", "sdram", "--sdram-mhz", mhz, "--nets", "mlp"]) == 2
    assert f"--sdram-mhz {float(mhz):g}: must be a clock in MHz above 0" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--memory", "sdram", "--engine-mhz", "0"], "--engine-mhz 0: must be a clock in MHz above 0"),
    (["--engine-mhz", "37.5"], "--engine-mhz 37.5: only with --memory sdram"),
])
def test_a_bad_engine_clock_is_named(bench, capsys, args, message):
    assert bench.main(args + ["--nets", "mlp"]) == 2
    assert message in capsys.readouterr().err


def test_sdram_summary(bench):
    """The SDRAM's account of an instruction (LeNet-5's fc1 forward product on the SDRAM at
    37.5 MHz, session 31's controller before its row-miss change): columns over cycles, the row
    misses and the turns."""
    commands = {"reads": 7_065_600, "writes": 0, "activates": 1_198_195, "precharges": 1_079_274, "read_to_write": 0}
    assert bench.sdram_summary(commands, 11_718_434) == (
        "60.3 % of cycles carry a column, 1198195 activates, 0 read-to-write turns")


def test_traffic_ceiling(bench):
    """1.58 G MACs over 29.24 M words (the 8-lane LeNet-5 step at batch 128): 54 MACs per word;
    at one word per cycle at 42.14 MHz at most 4.55 GOPS, so 64.6 GOPS needs 14.2 words per cycle."""
    figures = bench.traffic_ceiling(1_579_548_672, 29_243_904, 42.14)
    assert figures["macs_per_external_word"] == pytest.approx(54.013, abs=1e-3)
    assert figures["gops_ceiling_at_one_word_per_cycle"] == pytest.approx(2 * 54.013 * 42.14e6 / 1e9, rel=1e-4)
    assert figures["words_per_cycle_for_the_target"] == pytest.approx(64.6 / figures["gops_ceiling_at_one_word_per_cycle"])
    assert bench.traffic_ceiling(1000, 0, 42.14) == {}                  # on chip: no port, no ceiling
    assert set(bench.traffic_ceiling(1000, 10, None)) == {"macs_per_external_word"}


def test_estimate_check(bench):
    """The b128 SDRAM program: the compiler's estimate 51,863,552 cycles beside the 65,441,144 the
    SDRAM model measured (session 25, before fc1's weights straddled the weight store) is a ratio
    of 1.262."""
    from hw.engine.compiler import compile_network
    config = EngineConfig.load(PATH.parent / "configs" / "engine_lenet5_l8_b128_sdram.json")
    figures = bench.estimate_check(config, compile_network(config).instructions, 65_441_144)
    assert figures == {"port_bound_estimate": 51_863_552, "measured_over_estimate": pytest.approx(1.2618, abs=1e-4)}


def test_unit_estimates_cover_the_step_once(bench):
    """One estimate per unit the testbench times alone, and together they are the step's estimate:
    no record is left out or counted twice (the END record costs nothing)."""
    from hw.engine.compiler import compile_network, port_bound_cycles
    from sim.tb_engine import _units
    config = EngineConfig.load(PATH.parent / "configs" / "engine_lenet5_l8_b128_sdram.json")
    instructions = compile_network(config).instructions
    estimates = bench.unit_estimates(config, instructions)
    assert len(estimates) == len(_units(instructions[:-1]))
    assert sum(estimates) == port_bound_cycles(config, instructions) == 51_863_552


def test_conv_utilisation_counts_only_the_convolution_layers(bench):
    """LeNet-5 at batch 2: conv1's two products and conv2's three over their cycles; the fully
    connected layers' cycles stay out, and without per-layer cycles there is no figure."""
    wage = WageConfig(net="lenet5", batch_size=2)
    macs = bench.layer_macs(wage)
    layers = [{"cycles": 1000}, {"cycles": 3000}, {"cycles": 500}, {"cycles": 7}]
    useful = sum(macs[0].values()) + sum(macs[1].values())
    assert macs[0]["error"] == 0 and [layer.kind for layer in wage.layers] == ["conv", "conv", "fc", "fc"]
    assert bench.conv_utilisation(wage, layers, 8) == pytest.approx(useful / (4000 * 64))
    assert bench.conv_utilisation(wage, [{"cycles": 0}] * 4, 8) is None


def test_array_ceiling(bench):
    """8×8 slots at the routed engine's 46.03 MHz peak at 5.89 GOPS; 64.6 GOPS at that clock needs
    702 useful MACs per cycle, 4.5 times the 85F's 156 MULT18X18D."""
    figures = bench.array_ceiling(8, 46.03)
    assert figures["array_peak_gops"] == pytest.approx(5.892, abs=1e-3)
    assert figures["macs_per_cycle_for_the_target"] == pytest.approx(701.7, abs=0.1)


def _write(path, data):
    import json
    path.write_text(json.dumps(data))
    return path


def test_routed_fmax_is_the_best_routed_run_of_the_same_configuration(bench, tmp_path):
    """Engine reports of hw.synth (by their configuration file) and board builds (by their
    configuration) both count; another configuration, a report without a clock, a broken file and a
    build with the SDRAM on its own clock (another design) do not; the source names the file and the number of runs."""
    mine = _write(tmp_path / "mine.json", CONFIG.to_dict())
    other = _write(tmp_path / "other.json", CONFIG.replace(sum_words=0).to_dict())
    _write(tmp_path / "synth_engine_a.json", {"engine_config": str(mine), "fmax_mhz": 41.5})
    _write(tmp_path / "synth_engine_b.json", {"engine_config": str(mine), "fmax_mhz": 43.25})
    _write(tmp_path / "synth_engine_c.json", {"engine_config": str(other), "fmax_mhz": 90.0})
    _write(tmp_path / "synth_engine_d.json", {"engine_config": str(mine), "fmax_mhz": None})
    (tmp_path / "synth_engine_e.json").write_text("{not json")
    assert bench.routed_fmax(CONFIG, tmp_path) == (
        43.25, "routed at 43.25 MHz (synth_engine_b.json; the best of 2 routed run(s) of this configuration)")
    _write(tmp_path / "board_builds.json", {"ulx3s_x": {"config": CONFIG.to_dict(), "fmax_mhz": 44.0},
                                            "ulx3s_y": {"config": {"lanes": "bad"}, "fmax_mhz": 99.0},
                                            "ulx3s_z": {"config": CONFIG.to_dict(), "fmax_mhz": 48.0,
                                                        "freq_mhz": 37.5, "sdram_freq_mhz": 75.0}})
    fmax, source = bench.routed_fmax(CONFIG, tmp_path)
    assert fmax == 44.0 and "board_builds.json: ulx3s_x" in source and "best of 3" in source
    assert bench.routed_fmax(CONFIG.replace(lanes=4), tmp_path) is None


def test_the_clock_of_a_run(bench, tmp_path, monkeypatch):
    """--fmax first, then the engine's own clock, then the SDRAM's clock, then the routed Fmax, then the units' bound, which
    says that it is one."""
    monkeypatch.setattr(bench, "routed_fmax", lambda config: None)
    assert bench.run_clock(CONFIG, 50.0, 37.5) == (50.0, "given on the command line")
    assert bench.run_clock(CONFIG, None, 37.5)[0] == 37.5
    assert bench.run_clock(CONFIG, None, 75.0, 37.5) == (
        37.5, "the engine clock (--engine-mhz 37.5); the SDRAM on its own (--sdram-mhz 75)")
    fmax, source = bench.run_clock(CONFIG, None, None)
    assert source.startswith("not routed") and "upper bound" in source and fmax > 100
    monkeypatch.setattr(bench, "routed_fmax", lambda config: (46.03, "routed"))
    assert bench.run_clock(CONFIG, None, None) == (46.03, "routed")


def test_the_default_configurations_are_the_issues_85f_sized_runs(bench):
    """A plain run measures the MLP and LeNet-5 at batch 128 on the 8-lane engine (64 of the 85F's
    156 MULT18X18D); the LeNet-5 one has been routed (46.03 MHz, benchmarks/results)."""
    configs = [EngineConfig.load(p) for p in bench.DEFAULT_CONFIGS]
    assert [(c.wage.net, c.batch, c.lanes, c.target) for c in configs] == [("mlp", 128, 8, "ecp5"),
                                                                         ("lenet5", 128, 8, "ecp5")]
    assert configs[0].replace(wage=configs[1].wage) == configs[1]          # the same engine memories
    assert bench.routed_fmax(configs[1])[0] == 46.03


def test_config_files_and_nets_are_not_mixed(bench, capsys):
    assert bench.main(["--config", str(bench.DEFAULT_CONFIGS[0]), "--nets", "mlp"]) == 2
    assert "either --config files or --nets" in capsys.readouterr().err
