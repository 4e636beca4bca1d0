"""Simulation speed: a 16×16 int8 MAC array under cocotb + Verilator versus the raw Verilated model.

    .venv/bin/python benchmarks/sim_speed.py [--tiles 400] [--k 64] [--burst 1] [--rows 16 --cols 16]

Both sides simulate the *same* Verilog -- ``hw.mac_array.MacArray`` inside :class:`TileBench`
inside the ``sim.runner`` harness (clock and reset generated in HDL, Verilator ``--timing``) -- built
with the same Verilator arguments (``--vpi``; only the harness's ports, ``clk`` and ``rst`` public) and
the same C++ flags (``-O2``):

* **cocotb**: :func:`sim.runner.run_cocotb` runs :func:`speed` (this file is also the cocotb test
  module). Per burst of ``--burst`` tiles Python makes one write of the whole operand block
  (``tile_in``, K beats × (R + C) int8 lanes per tile), toggles ``start``, awaits one
  ``done`` value change, reads the whole result block (``tile_out``, R rows × C int32 lanes per
  tile) and checks it against NumPy. No Python runs while the array computes.
* **raw**: a C++ ``main`` (written below, no Python, no VPI callbacks) drives the same harness ports
  with xorshift data and the same toggle protocol, advancing time exactly like cocotb's Verilator
  main loop (``eventsPending``/``nextTimeSlot``).

Simulated cycles per second are measured over the tile loop only on both sides, per CPU second of
the simulating process (the machine is shared; wall-clock figures are printed too), best of
``--repeat`` interleaved rounds, and printed with their ratio; the target is cocotb ≥ 50 % of raw. Results go to
``benchmarks/results/sim_speed.json``. Builds are cached in ``sim_build/``; the first run builds
two 16×16 models (minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cocotb  # noqa: F401  (the cocotb test below)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NAME = "sim_speed_bench"


# ---------------------------------------------------------------------------------------------
# The HDL harness around the array (Amaranth)


def tile_bench(array, k: int, burst: int):
    """A component feeding ``array`` ``burst`` tiles of ``k`` beats from one wide port.

    Ports: ``tile_in`` (``burst·k`` beats of ``rows·a_width + cols·b_width`` bits, beat j at bits
    ``[j·W, (j+1)·W)``, lanes as in ``MacArray.operand_layout``; ``last`` is added by the bench
    on every k-th beat), ``start`` (request toggle), ``done`` (acknowledge: becomes equal to
    ``start`` when all ``burst·rows`` result rows are in ``tile_out``), ``tile_out`` (row i of the
    burst at bits ``[i·C·acc, (i+1)·C·acc)``), ``errors`` (the array's sticky
    ``k_overflow``/``operand_error``). Operands are offered every cycle (respecting ``ready``),
    results are always accepted.
    """
    from amaranth import Cat, Module, Mux, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class TileBench(wiring.Component):
        def __init__(self):
            self.array, self.k, self.burst = array, k, burst
            self.beat_width = array.rows * array.a_width + array.cols * array.b_width
            self.row_width = array.cols * array.accumulator_width
            super().__init__({
                "tile_in": In(burst * k * self.beat_width), "start": In(1), "done": Out(1),
                "tile_out": Out(burst * array.rows * self.row_width), "errors": Out(2),
            })

        def elaborate(self, platform):
            m = Module()
            m.submodules.array = arr = self.array
            n_beats, n_rows = self.burst * self.k, self.burst * arr.rows
            busy = Signal()
            beat = Signal(range(n_beats + 1))
            kk = Signal(range(self.k))
            row = Signal(range(n_rows + 1))
            m.d.comb += [
                arr.operands.valid.eq(busy & (beat < n_beats)),
                arr.operands.payload.eq(Cat(self.tile_in.word_select(beat, self.beat_width), kk == self.k - 1)),
                arr.results.ready.eq(1),
                arr.clear_error.eq(0),
                self.errors.eq(Cat(arr.k_overflow, arr.operand_error)),
            ]
            with m.If(~busy & (self.start != self.done)):
                m.d.sync += [busy.eq(1), beat.eq(0), kk.eq(0), row.eq(0)]
            with m.If(arr.operands.valid & arr.operands.ready):
                m.d.sync += [beat.eq(beat + 1), kk.eq(Mux(kk == self.k - 1, 0, kk + 1))]
            with m.If(busy & arr.results.valid):
                m.d.sync += [self.tile_out.word_select(row, self.row_width).eq(arr.results.payload.data),
                             row.eq(row + 1)]
                with m.If(row == n_rows - 1):
                    m.d.sync += [busy.eq(0), self.done.eq(self.start)]
            return m

    return TileBench()


# ---------------------------------------------------------------------------------------------
# cocotb side (runs inside the simulator)


@cocotb.test()
async def speed(dut):
    """Move whole bursts of tiles per Python call and check every result row against NumPy."""
    import numpy as np
    from cocotb.simtime import get_sim_time

    from sim.streams import sim_params, wait_reset

    p = sim_params()
    R, C, K, B, n = p["rows"], p["cols"], p["k"], p["burst"], p["bursts"]
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    t_prep = time.perf_counter()
    a = rng.integers(-127, 128, size=(n, B, K, R), dtype=np.int8)
    b = rng.integers(-127, 128, size=(n, B, K, C), dtype=np.int8)
    blocks = np.concatenate([a, b], axis=3).view(np.uint8).reshape(n, -1)
    tile_in = [int.from_bytes(blk.tobytes(), "little") for blk in blocks]
    expect = np.einsum("nbkr,nbkc->nbrc", a.astype(np.int32), b.astype(np.int32))  # (n, B, R, C)
    t_prep = time.perf_counter() - t_prep

    await wait_reset(dut)
    done = dut.done.value_change
    req = 0
    s0, t0, c0 = get_sim_time("ns"), time.perf_counter(), time.process_time()
    for i in range(n):
        dut.tile_in.value = tile_in[i]
        req ^= 1
        dut.start.value = req
        await done
        # Verilator: after the edge that raised `done` every register of that edge is visible
        out = dut.tile_out.value.to_unsigned().to_bytes(B * R * C * 4, "little")
        got = np.frombuffer(out, dtype="<i4").reshape(B, R, C)
        if not np.array_equal(got, expect[i]):
            bad = np.argwhere(got != expect[i])[0]
            raise AssertionError(f"burst {i}: tile/row/col {tuple(bad)}: expected {expect[i][tuple(bad)]}, "
                                 f"got {got[tuple(bad)]}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cycles = (get_sim_time("ns") - s0) / p["period_ns"]
    assert int(dut.errors.value) == 0, "k_overflow/operand_error raised"
    Path(p["out"]).write_text(json.dumps({"cycles": cycles, "seconds": wall, "cpu_seconds": cpu,
                                          "prep_seconds": t_prep, "tiles": n * B}))
    dut._log.info("cocotb: %d tiles, %.0f cycles in %.3f s = %.0f cycles/s", n * B, cycles, wall, cycles / wall)


# ---------------------------------------------------------------------------------------------
# raw side: C++ main


RAW_MAIN = r"""
// Raw Verilator driver for the sim_speed bench: same model, same harness, no Python.
#include <chrono>
#include <cstdint>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include "Vtop.h"
#include "verilated.h"

static vluint64_t main_time = 0;
double sc_time_stamp() { return main_time; }

static uint64_t xs = 0x9E3779B97F4A7C15ull;
static inline uint32_t rnd() { xs ^= xs << 13; xs ^= xs >> 7; xs ^= xs << 17; return (uint32_t)xs; }
// int8 lanes in -127..127 (never the reserved -128)
static inline uint32_t word() {
    uint32_t w = rnd();
    for (int i = 0; i < 4; ++i) if (((w >> (8 * i)) & 0xff) == 0x80) w ^= 1u << (8 * i);
    return w;
}

int main(int argc, char** argv) {
    long bursts = argc > 1 ? atol(argv[1]) : 100;
    double period = argc > 2 ? atof(argv[2]) : 10.0;
    Verilated::commandArgs(argc, argv);
    std::unique_ptr<Vtop> top(new Vtop(""));
    const int in_words = sizeof(top->tile_in) / sizeof(top->tile_in[0]);
    const int out_words = sizeof(top->tile_out) / sizeof(top->tile_out[0]);
    int req = 0;
    long started = 0, finished = 0;
    uint64_t checksum = 0;
    vluint64_t t0_time = 0;
    std::chrono::steady_clock::time_point t0;
    std::clock_t c0 = 0;
    while (!Verilated::gotFinish()) {
        top->eval();
        // The first burst is requested at time 0; the bench starts it when the harness's
        // power-on reset (4 cycles) is over, so the count includes those 4 cycles.
        if (started == finished) {              // idle: load the next burst and toggle start
            if (started == bursts) break;
            for (int w = 0; w < in_words; ++w) top->tile_in[w] = word();
            req ^= 1;
            top->start = req;
            if (started == 0) { t0 = std::chrono::steady_clock::now(); c0 = std::clock(); t0_time = main_time; }
            ++started;
            top->eval();
        } else if (top->done == req) {          // burst finished: read the results
            for (int w = 0; w < out_words; ++w) checksum = checksum * 31 + top->tile_out[w];
            ++finished;
            continue;                           // same time step: start the next one at once
        }
        if (!top->eventsPending()) break;
        main_time = top->nextTimeSlot();
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double cpu = (double)(std::clock() - c0) / CLOCKS_PER_SEC;
    double cycles = (double)(main_time - t0_time) / (period * 1000.0);  // time unit: ps
    top->final();
    printf("{\"cycles\": %.1f, \"seconds\": %.6f, \"cpu_seconds\": %.6f, \"bursts\": %ld, \"checksum\": %llu, "
           "\"errors\": %d}\n", cycles, secs, cpu, finished, (unsigned long long)checksum, (int)top->errors);
    return 0;
}
"""


def build_raw(bench, period_ns: float) -> Path:
    """Verilate the same Verilog with the C++ main above (cached like run_cocotb's builds).

    The build directory is keyed by the Verilog, the Verilator arguments and the make variables;
    the C++ main is rewritten only when it changed, so editing it recompiles just that file.
    """
    from amaranth.back import verilog

    from sim import runner

    design_v = verilog.convert(bench, name=NAME, emit_src=False)
    ports = runner.verilog_ports(design_v, NAME)
    # as run_cocotb builds it: only the harness's ports, clk and rst public
    harness_v = runner.harness_verilog(NAME, ports, clock_period_ns=period_ns, reset_cycles=4, public_ports=True)
    args = list(runner.BASE_BUILD_ARGS) + ["--vpi"]
    make_vars = runner.make_variables("-O2")
    versions = runner._tool_versions()
    key = runner.build_key(design_v + harness_v, args, False, {"make": make_vars, "versions": versions, "raw": 2})
    bdir = runner.SIM_BUILD / f"{NAME}_raw-{key}"
    bdir.mkdir(parents=True, exist_ok=True)
    main_cpp = bdir / "raw_main.cpp"
    if not main_cpp.is_file() or main_cpp.read_text() != RAW_MAIN:
        main_cpp.write_text(RAW_MAIN)
    runner.verilator_env()
    t = time.perf_counter()
    with open(bdir / "build.log", "a") as log:
        if not (bdir / "verilated.stamp").is_file():
            print(f"raw: verilating into {bdir} (log: {bdir / 'build.log'})", flush=True)
            (bdir / f"{NAME}.v").write_text(design_v)
            (bdir / f"{NAME}_tb.v").write_text(harness_v)
            cmd = ["verilator", "--cc", "--exe", "--prefix", "Vtop", "--top-module", f"{NAME}_tb",
                   "-Mdir", str(bdir), "-o", "raw_sim", "--timescale", "1ns/1ps", *args,
                   str(bdir / f"{NAME}.v"), str(bdir / f"{NAME}_tb.v"), str(main_cpp)]
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
            runtime_key = runner.build_key("", list(runner.BASE_BUILD_ARGS), False,
                                           {"make": runner.make_variables(), "versions": versions})
            runner._runtime_objects(bdir, runner.SIM_BUILD / f"_runtime-{runtime_key}", store=False)
            (bdir / "verilated.stamp").write_text("")
        print("raw: make (compiles only what changed)", flush=True)
        subprocess.run(["make", "-j", str(runner._build_jobs()), "-C", str(bdir), "-f", "Vtop.mk", *make_vars],
                       check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"raw: ready after {time.perf_counter() - t:.0f} s")
    return bdir / "raw_sim"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--k", type=int, default=64, help="beats per tile")
    ap.add_argument("--burst", type=int, default=1, help="tiles per Python call")
    ap.add_argument("--tiles", type=int, default=400, help="tiles to simulate on each side")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per side (best is kept)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sim_speed.json")
    args = ap.parse_args(argv)

    from golden.config import WageConfig
    from hw.mac_array import MacArray
    from hw.tiling import max_reductions
    from sim.runner import run_cocotb

    cfg = WageConfig()
    max_red = max_reductions(WageConfig(net="lenet5", batch_size=128))["gradient"]   # 32-bit accumulators

    def bench():
        arr = MacArray(cfg, args.rows, args.cols, mode="int8", max_reduction=max_red)
        return tile_bench(arr, args.k, args.burst)

    period = 10.0
    bursts = max(1, args.tiles // args.burst)
    raw_exe = build_raw(bench(), period)
    probe = bench()
    if probe.array.accumulator_width != 32:
        raise SystemExit(f"accumulator width {probe.array.accumulator_width}: the bench reads int32 lanes")
    out_json = REPO / "sim_build" / f"{NAME}-cocotb.json"
    params = {"rows": args.rows, "cols": args.cols, "k": args.k, "burst": args.burst, "bursts": bursts,
              "period_ns": period, "out": str(out_json)}

    # Interleave the two sides and keep the best of --repeat runs each: the machine is shared, so
    # the ratio uses process CPU time (wall time is reported too).
    raws, cocos, builds = [], [], []
    for i in range(args.repeat):
        run = subprocess.run([str(raw_exe), str(bursts), str(period)], check=True, capture_output=True, text=True)
        raw = json.loads(run.stdout.strip().splitlines()[-1])
        if raw["errors"] or raw["bursts"] != bursts:
            raise SystemExit(f"raw run failed: {raw}")
        raws.append(raw)
        res = run_cocotb(probe if i == 0 else bench(), name=NAME, test_module="sim_speed", seed=args.seed + i,
                         cxx_opt="-O2", clock_period_ns=period, parameters=params)
        builds.append(res)
        cocos.append(json.loads(out_json.read_text()))
        print(f"  round {i + 1}: raw {raw['cycles'] / raw['cpu_seconds']:.0f} cycles/CPU-s, "
              f"cocotb {cocos[-1]['cycles'] / cocos[-1]['cpu_seconds']:.0f} cycles/CPU-s", flush=True)

    def best(runs, key):
        return max(r["cycles"] / r[key] for r in runs)

    raw_cps, coco_cps = best(raws, "cpu_seconds"), best(cocos, "cpu_seconds")
    raw_wall, coco_wall = best(raws, "seconds"), best(cocos, "seconds")
    ratio = coco_cps / raw_cps
    summary = {
        "array": f"{args.rows}x{args.cols} int8", "k": args.k, "burst": args.burst, "tiles": bursts * args.burst,
        "cycles": {"raw": raws[0]["cycles"], "cocotb": cocos[0]["cycles"]}, "repeat": args.repeat,
        "cycles_per_cpu_s": {"raw": raw_cps, "cocotb": coco_cps},
        "cycles_per_wall_s": {"raw": raw_wall, "cocotb": coco_wall},
        "ratio_cpu": ratio, "ratio_wall": coco_wall / raw_wall,
        "cocotb_build_s": builds[0].build_s, "seeds": [r.seed for r in builds],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{args.rows}x{args.cols} int8 MAC array, {bursts * args.burst} tiles of K={args.k}, "
          f"{args.burst} tile(s) per Python call, best of {args.repeat}")
    print(f"  raw Verilator (C++ main) : {raw_cps:>10.0f} cycles/CPU-s  ({raw_wall:.0f} cycles/wall-s)")
    print(f"  cocotb + Verilator       : {coco_cps:>10.0f} cycles/CPU-s  ({coco_wall:.0f} cycles/wall-s)")
    print(f"  cocotb / raw             : {100 * ratio:.1f} %  (wall: {100 * coco_wall / raw_wall:.1f} %; "
          f"target >= 50 %)")
    print(f"  written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
