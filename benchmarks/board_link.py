"""MLP training steps through the serial link on the board's core, on Verilator: time per step at 3 Mbaud.

    .venv/bin/python benchmarks/board_link.py [--steps 1] [--freq MHZ] [--baud 3000000]
        [--out benchmarks/results/board_link_ulx3s_85F_sdram.json]

The design is what ``python -m hw.build --board ulx3s --memory sdram`` builds, less the PLL and the
I/O buffers: the ULX3S 85F SDRAM engine (:data:`boards.catalog.SDRAM_ENGINES`, 8 lanes, the
784-256-10 MLP at batch 16 with its first-layer weights in the SDRAM) at 40 MHz with its UART link
at 3 Mbaud and the board's own link timeouts, the SDRAM chip model on its pins
(:class:`boards.board_system.BoardSDRAMSystem`), and the host's UART around it
(``sim/tb_board.py``, no line faults). Each step is what
``python -m boards.train`` does on the board: write the batch, RUN, read back every weight and
compare with golden. The report (JSON) gives, per step, the simulated seconds, the words moved, the
engine's RUN cycles and the link's payload throughput; the weight read-back dominates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "board_link_ulx3s_85F_sdram.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--freq", type=float, default=None, help="engine clock in MHz (default: the build's, 40)")
    ap.add_argument("--baud", type=int, default=3_000_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps {args.steps}: must be at least 1")

    from boards.catalog import SDRAM_ENGINES, SDRAM_FREQ_MHZ
    from sim.ecp5_models import ecp5_model_files
    from sim.runner import run_cocotb
    from sim.test_sim_board import board_bench

    config = SDRAM_ENGINES["85F"]
    freq = args.freq or SDRAM_FREQ_MHZ
    clk = freq * 1e6
    period_ns = 1e9 / clk
    if abs(round(period_ns * 500) - period_ns * 500) > 1e-6:
        ap.error(f"--freq {freq}: the clock period {period_ns} ns must be a multiple of 2 ps")
    out = args.out.resolve()
    top, params = board_bench(config, clk, args.baud, None, commands=0, min_faults=0, steps=args.steps,
                              out=str(out))
    t0 = time.time()
    r = run_cocotb(top, name="board_ulx3s_sdram", test_module="sim.tb_board", testcase="link_storm",
                   clock_period_ns=period_ns, cxx_opt="-O2", build_args=ecp5_model_files(), timeout_s=4 * 3600,
                   parameters=params)
    report = json.loads(out.read_text())
    import subprocess
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report.update({"commit": commit, "config": config.to_dict(), "fingerprint": config.fingerprint(), "freq_mhz": freq,
                   "baud": args.baud, "seed": r.seed, "wall_seconds": time.time() - t0,
                   "command": "python benchmarks/board_link.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    out.write_text(json.dumps(report, indent=1))
    for s in report["steps"]:
        print(f"step {s['step']}: {s['seconds']:.3f} s at {freq:g} MHz / {args.baud} baud, {s['words']} words, "
              f"RUN {s['engine_cycles']} cycles ({s['engine_cycles'] / clk * 1e3:.1f} ms), link "
              f"{s['throughput_bytes_per_s'] / 1000:.1f} kB/s of payload")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
