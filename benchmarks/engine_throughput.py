"""Training throughput of the engine, from its own cycle counters on Verilator.

    .venv/bin/python benchmarks/engine_throughput.py [--config ENGINE.json ...] [--fmax MHZ]
        [--nets mlp lenet5] [--lanes 8 16]
        [--memory external|sdram|simulated] [--ext-latency 20] [--ext-cycles-per-word 1]
        [--ext-command-cycles 0] [--sdram-mhz 100] [--engine-mhz MHZ] [--sum-words 0] [--external-sums]
        [--no-per-instruction]

By default it measures the issue's two networks at batch 128 on the LFE5U-85F-sized 8-lane
engine (:data:`DEFAULT_CONFIGS`: 64 MULT18X18D of the 85F's 156, its block RAM, the rest of the
tensors behind the external-memory port): for each, the engine RTL (``hw.engine.engine.Engine``)
runs one training step in Verilator (``sim/tb_engine.py::throughput``, build cached in
``sim_build/``; the step's weights must equal golden's), then each instruction of the step alone,
and reports its counters: cycles per step by phase and per instruction, array beats, MAC-slot
utilisation (useful multiply-accumulates — forward, error and gradient products, each counted
once — over cycles × L² slots) for the step and per layer, and images/s and GOPS (2 operations
per useful MAC) at the clock. The clock is ``--fmax`` if given, else the clock this configuration
was routed at (:func:`routed_fmax`: the best post-route Fmax among the engine reports of
``hw.synth`` and the board builds in ``benchmarks/results/``), else, for a configuration never
routed, the lowest post-route Fmax among the units the engine is built from
(``benchmarks/synth_units.py``), an upper bound the report names as such. ``--nets`` and
``--lanes`` measure the networks on configurations sized here instead (8×8 fits the 85F's
multipliers, 16×16 = 256 does not).

Memories: 16 384 data and 16 384 weight words (one DP16KD bank each, what the LFE5U-85F holds).
A network whose tensors need more keeps them, with ``--memory external`` (the default), in the
external memory behind the engine's port (:class:`hw.engine.system.EngineSystem`: the simulation
model with ``--ext-latency`` cycles of read latency, one word per ``--ext-cycles-per-word`` cycles
and ``--ext-command-cycles`` dead cycles per burst), and the report gives the external words read
and written per step, the useful MACs per external word, and the traffic ceiling: the GOPS the
program cannot pass with the port moving a word per cycle at the clock (and the words per cycle
the issue's 64.6 GOPS would need). ``--memory sdram`` puts the board's SDRAM there instead
(:class:`boards.sdram_system.EngineSDRAMSystem`: the SDRAM controller and the checking chip model,
its timing in cycles at ``--sdram-mhz``, which is then also the clock of the images/s: the engine and
the SDRAM share it; with ``--engine-mhz`` the engine runs on that clock instead and the SDRAM on its
own, across the port's clock crossing, :class:`~hw.engine.extcdc.ExternalMemoryCDC`, as on the
board with ``python -m hw.build --sdram-freq``). With ``--memory simulated`` it runs instead with on-chip memories as deep as
it needs (not buildable on the 85F; the port's cost is then not in the figures); simulated memories
beyond ``--max-sim-words`` words make the Verilog conversion crawl (Amaranth writes every memory's
zero init as one constant; a 196k-word memory kept yosys busy for more than ten minutes), so such a
network is measured at the largest batch ``--batch``/2^k that fits, and the report says which.
``--sum-words N`` gives the engine an N-row sum buffer (``EngineConfig.sum_words``): every error
and gradient product whose result rows fit it runs store-then-quantise (its array pass once)
instead of compute-twice; the report lists which, and the buffer's size in bits. With an external
memory, ``--external-sums`` adds a region for the sums of the products whose rows do not fit the
buffer, sized for the largest (``EngineConfig.external_sum_words``).
``--config FILE ...`` measures the given :class:`~hw.engine.config.EngineConfig` files as they are
(a board build's configuration, e.g. ``boards/configs/ulx3s_85f_conv.json``) instead of ``--nets``
at ``--batch`` on ``--lanes``; the sizing options then do not apply.
``--no-per-instruction`` skips the per-instruction runs (each instruction run alone), which double
the simulation time.
Results go to ``benchmarks/results/engine_throughput.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from golden.config import WageConfig  # noqa: E402
from hw.engine.compiler import FitError, Placement, UnsupportedNetwork, compile_network, straddle_line  # noqa: E402
from hw.engine.config import EngineConfig  # noqa: E402
from hw.engine.isa import STORES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "engine_throughput.json"
#: What a plain run measures: the MLP and the WAGE LeNet-5 at batch 128 on the same 85F-sized
#: 8-lane engine (8,192 data and weight words, a 1,024-row sum buffer, the external memory at a
#: word per cycle behind the port).
DEFAULT_CONFIGS = (ROOT / "benchmarks" / "configs" / "engine_mlp_l8_b128.json",
                   ROOT / "benchmarks" / "configs" / "engine_lenet5_l8_b128.json")
#: Units inside the engine whose measured Fmax bounds the engine's clock.
ENGINE_UNITS = ("threefry", "quantizer_1", "weight_update_32x512", "mac_int8_8x8")
#: The issue's rate target in GOPS (an 8-bit trainer on a Zynq-7045 with 900 DSPs).
GOPS_TARGET = 64.6


def layer_macs(wage: WageConfig) -> list[dict[str, int]]:
    """Per layer, the multiply-accumulates of one training step's products, each counted once."""
    b = wage.batch_size
    out = []
    for layer in wage.layers:
        macs = b * layer.out_positions * layer.out_channels * layer.fan_in
        out.append({"forward": macs, "error": macs if layer.index > 0 else 0, "gradient": macs})
    return out


def useful_macs(wage: WageConfig) -> dict[str, int]:
    """Multiply-accumulates of one training step, each product counted once."""
    per_layer = layer_macs(wage)
    return {k: sum(m[k] for m in per_layer) for k in ("forward", "error", "gradient")}


#: 16,384 program words (512 kbit): LeNet-5's b128 step on 8 lanes (engine_lenet5_l8_b128.json), with
#: conv2's error product in 108 parts (9 row bands × 12 column groups of 1), its staged gradient and
#: its forward product in 10 batch bands, takes 156 records, 4,770 words as delta records
#: (:mod:`hw.engine.encoding`)
PROGRAM_WORDS = 16384


def sized_config(net: str, batch: int, lanes: int, external: bool = False,
                 program_words: int = PROGRAM_WORDS) -> tuple[EngineConfig, str | None]:
    """The 85F-sized configuration, or, if the tensors do not fit it, one that keeps what does not
    fit in the external memory (``external``) or whose (simulated) memories are as deep as the
    network needs, with a note saying which and why."""
    wage = WageConfig(net=net, batch_size=batch)
    config = EngineConfig(wage, lanes=lanes, data_words=16384, weight_words=16384, label_words=max(256, batch),
                          program_words=program_words)
    try:
        compile_network(config)
        return config, None
    except FitError as e:
        reason = str(e)
    big = config.replace(data_words=1 << 20, weight_words=1 << 20)
    usage = compile_network(big).usage
    if external:
        spill = config.replace(external_words=1 << 20, external_weight_words=1 << 20)
        # as many external words as first fit needs: room for any placement the compiler may choose
        used = compile_network(spill, Placement()).usage
        config = config.replace(external_words=max(1, used["external"][0]),
                                external_weight_words=used.get("external weights", (0,))[0])
        return config, (f"does not fit the LFE5U-85F's block RAM ({reason.split(';')[0]}); "
                        f"{config.external_words} data and {config.external_weight_words} weight words "
                        f"live in the external memory")
    data = max(usage["act"][0], usage["err"][0])
    config = config.replace(data_words=max(data, 16384), weight_words=max(usage["weights"][0], 16384))
    return config, (f"does not fit the LFE5U-85F's block RAM ({reason.split(';')[0]}); simulated with "
                    f"{config.data_words} data and {config.weight_words} weight words. On the board these "
                    f"tensors go through the external-memory port (--memory external): its cost is not in these figures")


def unit_fmax() -> tuple[float | None, str]:
    path = ROOT / "benchmarks" / "results" / "synth_units.json"
    try:
        configs = json.loads(path.read_text())["configs"]
    except (OSError, ValueError, KeyError):
        return None, "no synthesis results"
    figures = {u: configs.get(u, {}).get("fmax_mhz") for u in ENGINE_UNITS}
    known = {u: f for u, f in figures.items() if f}
    if not known:
        return None, "no synthesis results"
    unit = min(known, key=known.get)
    return known[unit], (f"not routed: the lowest unit Fmax ({unit}, {known[unit]:.1f} MHz), an upper bound "
                         f"(a routed engine runs far slower)")


def routed_fmax(config: EngineConfig, results: Path = ROOT / "benchmarks" / "results") -> tuple[float, str] | None:
    """The best clock ``config`` has been routed at, and where that figure comes from: the highest
    post-route Fmax among ``hw.synth``'s engine reports (``synth_engine_*.json``, whose
    ``engine_config`` file holds this configuration) and the board builds (``board_builds.json``,
    whose ``config`` is it); None if it was never routed. Runs of older RTL count too (the files
    say which RTL each routed), so the source names the file and how many runs there were."""
    found = []
    for path in sorted(results.glob("synth_engine_*.json")):
        try:
            report = json.loads(path.read_text())
            if report.get("fmax_mhz") and EngineConfig.load(ROOT / report["engine_config"]) == config:
                found.append((float(report["fmax_mhz"]), path.name))
        except (OSError, ValueError, KeyError, TypeError):
            continue                            # not an engine report, or its configuration is gone
    try:
        builds = json.loads((results / "board_builds.json").read_text())
    except (OSError, ValueError):
        builds = {}
    for key, build in builds.items():
        try:
            # a build with the SDRAM on a clock of its own measured another design's engine clock
            two_clocks = build.get("sdram_freq_mhz") not in (None, build.get("freq_mhz"))
            if build.get("fmax_mhz") and not two_clocks and EngineConfig.from_dict(build["config"]) == config:
                found.append((float(build["fmax_mhz"]), f"board_builds.json: {key}"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    if not found:
        return None
    fmax, source = max(found)
    return fmax, f"routed at {fmax:.2f} MHz ({source}; the best of {len(found)} routed run(s) of this configuration)"


def sim_name(config: EngineConfig, timing=None, engine_mhz: float | None = None) -> str:
    """The simulation's name (its build directory's prefix; a plain Verilog identifier): network,
    batch, lanes, sum memories, the external memory's timing (``timing``: an ExternalTiming, or
    the SDRAM clock in MHz, and ``engine_mhz`` the engine's when it differs) and the target."""
    name = f"engine_{config.wage.net.replace('-', '_')}_b{config.batch}_l{config.lanes}"
    if config.sum_words:
        name += f"_s{config.sum_words}"
    if config.external_sum_words:
        name += f"_xs{config.external_sum_words}"
    if config.external_depth and isinstance(timing, float):
        name += f"_sdram{timing:g}".replace(".", "p")           # 42.14 MHz → sdram42p14
        if engine_mhz:
            name += f"_engine{engine_mhz:g}".replace(".", "p")
    elif config.external_depth:
        name += f"_ext{timing.latency}_{timing.cycles_per_word}_{timing.command_cycles}"
    if config.target == "ecp5":
        name += "_ecp5"
    return name


def traffic_ceiling(macs: int, ext_words: int, fmax_mhz: float | None) -> dict:
    """What the external traffic allows: useful MACs per external word (read or written) and, at
    one word per cycle (the port's peak) and ``fmax_mhz``, the GOPS no schedule of this program
    can pass, with the words per cycle a ``GOPS_TARGET`` rate would need at that clock."""
    if not ext_words:
        return {}
    out = {"macs_per_external_word": macs / ext_words}
    if fmax_mhz:
        seconds_at_one_word = ext_words / (fmax_mhz * 1e6)
        out["gops_ceiling_at_one_word_per_cycle"] = 2 * macs / seconds_at_one_word / 1e9
        out["gops_target"] = GOPS_TARGET
        out["words_per_cycle_for_the_target"] = GOPS_TARGET / out["gops_ceiling_at_one_word_per_cycle"]
    return out


def estimate_check(config: EngineConfig, instructions: list, cycles: int) -> dict:
    """The compiler's port-bound estimate of the step (:func:`hw.engine.compiler.port_bound_cycles`,
    what its staging choices minimise) beside the measured cycles: a ratio far above 1 says the
    estimate misses a cost that the choices should weigh (it counts reads only, at
    ``external_cycles_per_word``)."""
    from hw.engine.compiler import port_bound_cycles
    estimate = port_bound_cycles(config, instructions)
    return {"port_bound_estimate": estimate, "measured_over_estimate": cycles / estimate if estimate else None}


def unit_estimates(config: EngineConfig, instructions: list) -> list[int]:
    """The port-bound estimate of each unit the testbench times alone (:func:`sim.tb_engine._units`:
    one instruction, or a product in parts or bands with the copies that stage it), in its order:
    beside each unit's measured cycles it shows which products the estimate misses."""
    from hw.engine.compiler import port_bound_cycles
    from sim.tb_engine import _units
    return [port_bound_cycles(config, unit) for unit in _units(instructions[:-1])]


def conv_utilisation(wage: WageConfig, layers: list, lanes: int) -> float | None:
    """MAC-slot utilisation of the convolution layers together (the issue's target is on them):
    their useful MACs over their measured cycles' slots."""
    per_layer = layer_macs(wage)
    conv = [i for i, layer in enumerate(wage.layers) if layer.kind == "conv" and layers[i]["cycles"]]
    cycles = sum(layers[i]["cycles"] for i in conv)
    if not cycles:
        return None
    useful = sum(per_layer[i]["forward"] + per_layer[i]["error"] + per_layer[i]["gradient"] for i in conv)
    return useful / (cycles * lanes * lanes)


def sdram_summary(commands: dict, cycles: int) -> str:
    """Where the SDRAM's cycles went: the share that carried a column (a 16-bit beat), the row
    misses and the read-to-write turns (each idles the bus)."""
    columns = commands["reads"] + commands["writes"]
    return (f"{100 * columns / cycles:.1f} % of cycles carry a column, {commands['activates']} activates, "
            f"{commands['read_to_write']} read-to-write turns")


def array_ceiling(lanes: int, fmax_mhz: float) -> dict:
    """What the clock allows whatever the memory does: the L×L array's peak GOPS (every slot
    useful) and the multiply-accumulates per cycle ``GOPS_TARGET`` would need at this clock."""
    return {"array_peak_gops": 2 * lanes * lanes * fmax_mhz / 1e3,
            "macs_per_cycle_for_the_target": GOPS_TARGET * 1e3 / (2 * fmax_mhz)}


def measure(config: EngineConfig, timing=None, per_instruction: bool = True, engine_mhz: float | None = None) -> dict:
    from hw.engine.engine import Engine
    from hw.engine.system import EngineSystem
    from sim.runner import clock_period_ns, run_cocotb
    engine = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    engine["wage"] = config.wage.to_json(indent=None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counters.json"
        name = sim_name(config, timing, engine_mhz)
        clocks = {}
        if config.external_depth and isinstance(timing, float):          # the SDRAM at this clock (MHz)
            from boards.sdram_system import EngineSDRAMSystem
            top = EngineSDRAMSystem(config, (engine_mhz or timing) * 1e6, sdram_freq=timing * 1e6)
            clocks = {domain: clock_period_ns(freq) for domain, freq in top.domain_freqs.items()}
        elif config.external_depth:
            top = EngineSystem(config, timing)
        else:
            top = Engine(config)
        build_args = ()
        if config.target == "ecp5":            # DP16KD and MULT18X18D instances: their models
            from sim.ecp5_models import ecp5_model_files
            build_args = ecp5_model_files()
        run_cocotb(top, name=name, test_module="sim.tb_engine", testcase="throughput",
                   parameters={"engine": engine, "out": str(out), "per_instruction": per_instruction},
                   timeout_s=4 * 3600, build_args=build_args, clock_period_ns=clocks.pop("sync", 10),
                   domain_clocks=clocks)
        return json.loads(out.read_text())


def sized_configs(args, external: bool):
    """(key, config, note) per --nets × --lanes: the network at --batch (halved until its simulated
    memories fit --max-sim-words) with the options' memories; config None (note: why) when the
    engine cannot run the network."""
    for net, lanes in [(n, l) for n in args.nets for l in args.lanes]:
        key = f"{net}_l{lanes}"
        try:
            config, note = sized_config(net, args.batch, lanes, external, args.program_words)
        except UnsupportedNetwork as e:
            yield key, None, str(e)
            continue
        batch = config.batch
        while config.data_words > args.max_sim_words and batch > 1:
            batch //= 2
            config, note = sized_config(net, batch, lanes, external, args.program_words)
        if batch != args.batch:
            note = (note or "") + (f"; measured at batch {batch}: at batch {args.batch} the simulated memories would be too "
                     f"deep for the Verilog conversion (--max-sim-words {args.max_sim_words})")
        config = config.replace(sum_words=args.sum_words)
        if args.external_sums and config.external_words:
            from hw.engine.compiler import result_rows, two_pass_products
            rows = max(result_rows(ins, lanes) for ins in compile_network(config).instructions
                       if ins.op in two_pass_products())
            config = config.replace(external_sum_words=rows * config.sum_chunks)
        yield key, config, note


def given_clock(fmax: float | None, sdram_mhz: float | None,
                engine_mhz: float | None = None) -> tuple[float | None, str]:
    """The clock the command line sets for every run: ``--fmax``, else the engine's own clock
    (``--engine-mhz``), else the SDRAM's clock, which the engine shares; else none (each run's
    own, :func:`run_clock`)."""
    if fmax:
        return fmax, "given on the command line"
    if engine_mhz:
        return engine_mhz, (f"the engine clock (--engine-mhz {engine_mhz:g}); the SDRAM on its own "
                            f"(--sdram-mhz {sdram_mhz:g})")
    if sdram_mhz:
        return sdram_mhz, f"the SDRAM clock (--sdram-mhz {sdram_mhz:g}), shared by the engine"
    return None, "per configuration"


def run_clock(config: EngineConfig, fmax: float | None, sdram_mhz: float | None,
              engine_mhz: float | None = None) -> tuple[float | None, str]:
    """The clock a run's images/s are reckoned at, and why: the command line's
    (:func:`given_clock`); the configuration's routed Fmax; or, never routed, the units' bound."""
    given = given_clock(fmax, sdram_mhz, engine_mhz)
    return given if given[0] else (routed_fmax(config) or unit_fmax())


def given_configs(paths) -> list:
    """(key, config, note) per --config file, the configuration as it is (key: the file's stem);
    all read before anything runs, so a bad file stops the benchmark at once."""
    return [(path.stem, EngineConfig.load(path), f"--config {path}") for path in paths]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=None,
                    help="measure these networks on configurations sized here (with --batch, --lanes) "
                         "instead of the default configuration files")
    ap.add_argument("--config", type=Path, nargs="+", default=[],
                    help="measure these EngineConfig JSON files as they are (network, batch, lanes and "
                         "memories; e.g. a board build's); default: "
                         + ", ".join(str(p.relative_to(ROOT)) for p in DEFAULT_CONFIGS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lanes", type=int, nargs="+", default=[8, 16],
                    help="array sides to measure (8: 64 MULT18X18D, fits the LFE5U-85F's 156; 16 needs 256)")
    ap.add_argument("--fmax", type=float, default=None,
                    help="clock in MHz (default: the configuration's routed Fmax, else the lowest unit Fmax)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON report goes")
    ap.add_argument("--max-sim-words", type=int, default=40000,
                    help="deepest simulated data memory (else the batch is halved until it fits)")
    ap.add_argument("--sdram-mhz", type=float, default=100.0,
                    help="--memory sdram: the SDRAM's (and the engine's) clock in MHz (default 100)")
    ap.add_argument("--engine-mhz", type=float, default=None,
                    help="--memory sdram: the engine's own clock in MHz, the SDRAM on --sdram-mhz across "
                         "a clock crossing (default: the SDRAM's)")
    ap.add_argument("--memory", choices=("external", "sdram", "simulated"), default="external",
                    help="where tensors that do not fit the 85F's block RAM go (see the module docstring)")
    ap.add_argument("--ext-latency", type=int, default=20, help="external memory: read latency in cycles")
    ap.add_argument("--ext-cycles-per-word", type=int, default=1, help="external memory: cycles per word")
    ap.add_argument("--ext-command-cycles", type=int, default=0, help="external memory: dead cycles per burst")
    ap.add_argument("--program-words", type=int, default=PROGRAM_WORDS,
                    help=f"program memory words (default {PROGRAM_WORDS}; fewer: fewer error-product parts)")
    ap.add_argument("--sum-words", type=int, default=0,
                    help="rows of the sum buffer (store-then-quantise for the products that fit; 0: compute-twice)")
    ap.add_argument("--external-sums", action="store_true",
                    help="with an external memory: sums that do not fit the buffer go through the port")
    ap.add_argument("--no-per-instruction", dest="per_instruction", action="store_false",
                    help="skip running each instruction alone (per-layer figures)")
    args = ap.parse_args(argv)
    from hw.engine.system import ExternalTiming
    timing = ExternalTiming(args.ext_latency, args.ext_cycles_per_word, args.ext_command_cycles)
    external = args.memory in ("external", "sdram")
    if args.memory == "sdram":
        timing = float(args.sdram_mhz)
        if not 0 < timing <= 1000:
            print(f"error: --sdram-mhz {args.sdram_mhz:g}: must be a clock in MHz above 0 (at most 1000)", file=sys.stderr)
            return 2
    engine_mhz = args.engine_mhz
    if engine_mhz is not None and args.memory != "sdram":
        print(f"error: --engine-mhz {engine_mhz:g}: only with --memory sdram (the SDRAM on its own clock)", file=sys.stderr)
        return 2
    if engine_mhz is not None and not 0 < engine_mhz <= 1000:
        print(f"error: --engine-mhz {engine_mhz:g}: must be a clock in MHz above 0 (at most 1000)", file=sys.stderr)
        return 2
    if engine_mhz == timing:
        engine_mhz = None                                   # one clock: no crossing
    fmax, fmax_note = given_clock(args.fmax, timing if args.memory == "sdram" else None, engine_mhz)
    report = {"fmax_mhz": fmax, "fmax_source": fmax_note, "batch": args.batch,
              "date": time.strftime("%Y-%m-%d %H:%M"), "runs": {}}
    try:
        if args.config and args.nets:
            raise ValueError("give either --config files or --nets, not both")
        jobs = (sized_configs(args, external) if args.nets else given_configs(args.config or DEFAULT_CONFIGS))
    except (OSError, ValueError) as e:
        print(f"error: --config: {e}", file=sys.stderr)
        return 2
    for key, config, note in jobs:
        if config is None:
            report["runs"][key] = {"status": "not run", "reason": note}
            print(f"{key}: not run: {note}")
            continue
        batch, lanes = config.batch, config.lanes
        try:
            program = compile_network(config)
        except (FitError, UnsupportedNetwork) as e:
            print(f"error: {key}: {e}", file=sys.stderr)
            return 2
        if args.memory == "sdram" and config.external_depth and config.external_cycles_per_word == 1:
            print(f"note: {key} was compiled for a memory of a word per cycle (external_cycles_per_word = 1); the "
                  f"SDRAM takes several cycles per word, and a configuration that says so gets spilled operands "
                  f"staged (EngineConfig.external_cycles_per_word; benchmarks/configs/engine_lenet5_l8_b128_sdram.json)")
        stored = [f"{ins} ({STORES[ins.stored]})" for ins in program.instructions if getattr(ins, "stored", 0)]
        fmax, fmax_source = run_clock(config, args.fmax, timing if args.memory == "sdram" else None, engine_mhz)
        wage = config.wage
        t = time.time()
        result = measure(config, timing, args.per_instruction, engine_mhz)
        c = result["counters"]
        cycles = c["run_cycles"]
        macs = useful_macs(wage)
        total = sum(macs.values())
        L = config.lanes
        dsp = L * L
        per_layer = layer_macs(wage)
        kinds = {"FWD": "forward", "CONV_FWD": "forward", "ERR": "error", "CONV_ERR": "error",
                 "GRAD": "gradient", "CONV_GRAD": "gradient"}
        instructions = []
        estimates = unit_estimates(config, program.instructions) if result["instructions"] else []
        for item, estimate in zip(result["instructions"], estimates, strict=True):   # (a unit missed is an error)
            op, _, layer = item["instruction"].split()[:3]
            entry = {"instruction": item["instruction"], "cycles": item["cycles"], "port_bound_estimate": estimate}
            if item.get("sdram"):
                entry["sdram_commands"] = item["sdram"]
            if op in kinds:
                useful = per_layer[int(layer)][kinds[op]]
                entry["useful_macs"] = useful
                entry["mac_slot_utilisation"] = useful / (item["cycles"] * L * L)
            instructions.append(entry)
        layers = []
        for i, layer in enumerate(wage.layers):
            mine = [e for e in instructions if e["instruction"].split()[2] == str(i) and "useful_macs" in e]
            lc = sum(e["cycles"] for e in mine)
            layers.append({"layer": layer.describe(), "cycles": lc,
                           "mac_slot_utilisation": sum(e["useful_macs"] for e in mine) / (lc * L * L) if lc else None})
        entry = {"status": "measured", "batch": batch, "note": note, "fmax_mhz": fmax, "fmax_source": fmax_source,
                 "lanes": L, "mult18x18d": dsp,
                 "fits_85f_dsps": dsp <= 156, "data_words": config.data_words, "weight_words": config.weight_words,
                 "program_words": config.program_words,
                 "cycles_per_step": cycles,
                 "cycles_by_phase": {k: c[f"{k}_cycles"] for k in ("fwd", "loss", "err", "grad")},
                 "sum_words": config.sum_words, "sum_buffer_bits": config.sum_words * config.sum_width,
                 "external_sum_words": config.external_sum_words,
                 "store_then_quantise": stored,
                 "straddled": program.straddled,
                 "array_beats": c["array_beats"], "useful_macs": macs,
                 "mac_slot_utilisation": total / (cycles * L * L),
                 "array_busy": c["array_beats"] / cycles, "layers": layers,
                 "conv_layers_mac_slot_utilisation": conv_utilisation(wage, layers, L), "instructions": instructions,
                 "external_words": config.external_words, "external_weight_words": config.external_weight_words,
                 "external_timing": (None if not config.external_depth else
                                     {"sdram_mhz": timing, "engine_mhz": engine_mhz or timing}
                                     if isinstance(timing, float) else dataclasses.asdict(timing)),
                 "external_cycles_per_word": config.external_cycles_per_word,
                 "program_records": len(program.instructions),
                 "ext_read_words_per_step": c["ext_read_words"], "ext_write_words_per_step": c["ext_write_words"],
                 **({"sdram_commands_per_step": result["sdram"]} if result.get("sdram") else {}),
                 "sim_wall_s": round(time.time() - t, 1)}
        if fmax:
            seconds = cycles / (fmax * 1e6)
            entry["images_per_s"] = wage.batch_size / seconds
            entry["gops"] = 2 * total / seconds / 1e9
            entry.update(array_ceiling(L, fmax))
        entry.update(traffic_ceiling(total, c["ext_read_words"] + c["ext_write_words"], fmax))
        entry.update(estimate_check(config, program.instructions, cycles))
        report["runs"][key] = entry
        print(f"{key} (batch {batch}): {cycles} cycles/step {entry['cycles_by_phase']}, utilisation "
              f"{100 * entry['mac_slot_utilisation']:.1f} %"
              + (f", {entry['images_per_s']:.0f} images/s, {entry['gops']:.2f} GOPS at {fmax:.1f} MHz" if fmax else ""))
        for lay in layers:
            if lay["cycles"]:
                print(f"    {lay['layer']}: {lay['cycles']} cycles, utilisation {100 * lay['mac_slot_utilisation']:.1f} %")
        if entry["conv_layers_mac_slot_utilisation"] is not None:
            print(f"    the convolution layers together: utilisation {100 * entry['conv_layers_mac_slot_utilisation']:.1f} %")
        for item in instructions:
            if item["port_bound_estimate"]:
                print(f"    {item['instruction']}: {item['cycles']} cycles, estimate {item['port_bound_estimate']} "
                      f"(x{item['cycles'] / item['port_bound_estimate']:.2f})"
                      + (f"; SDRAM {sdram_summary(item['sdram_commands'], item['cycles'])}" if "sdram_commands" in item else ""))
        if "sdram_commands_per_step" in entry:
            print(f"    SDRAM over the step: {sdram_summary(entry['sdram_commands_per_step'], cycles)}")
        if fmax:
            print(f"    the {L}x{L} array peaks at {entry['array_peak_gops']:.2f} GOPS at {fmax:.1f} MHz; {GOPS_TARGET:g} GOPS "
                  f"would need {entry['macs_per_cycle_for_the_target']:.0f} useful MACs per cycle at this clock")
        if stored:
            print(f"    store-then-quantise ({config.sum_words} x {config.sum_width}-bit sum buffer, "
                  f"{config.sum_words * config.sum_width / 1e6:.2f} Mbit; {config.external_sum_words} external "
                  f"sum words): {', '.join(stored)}")
        if config.external_depth:
            print(f"    external memory ({timing}): {c['ext_read_words']} words read, {c['ext_write_words']} written "
                  f"per step ({(c['ext_read_words'] + c['ext_write_words']) / cycles:.3f} words/cycle)")
            if "gops_ceiling_at_one_word_per_cycle" in entry:
                print(f"    {entry['macs_per_external_word']:.1f} useful MACs per external word: at most "
                      f"{entry['gops_ceiling_at_one_word_per_cycle']:.2f} GOPS at one word per cycle at {fmax:.1f} MHz; "
                      f"{GOPS_TARGET:g} GOPS would need "
                      f"{entry['words_per_cycle_for_the_target']:.1f} words per cycle")
        print(f"    the compiler's port-bound estimate: {entry['port_bound_estimate']} cycles "
              f"(measured / estimate = {entry['measured_over_estimate']:.3f})")
        for name, words in program.straddled.items():
            print(f"    {straddle_line(name, words)}")
        print(f"    clock: {fmax_source}")
        if note:
            print(f"    note: {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"clock: {fmax_note}; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
