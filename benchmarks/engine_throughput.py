"""Training throughput of the engine, from its own cycle counters on Verilator.

    .venv/bin/python benchmarks/engine_throughput.py [--fmax MHZ] [--nets mlp lenet5]

For each network at batch 128 and each array side (``--lanes``; 8×8 = 64 MULT18X18D fits the
LFE5U-85F's 156, 16×16 = 256 does not), with 16 384 weight words and 16 384 data words, the engine RTL (``hw.engine.engine.Engine``) runs one training step in
Verilator (``sim/tb_engine.py::throughput``, build cached in ``sim_build/``) and reports its
counters: cycles per step by phase, array beats, MAC-slot utilisation (useful multiply-accumulates
of the step — forward, error and gradient products, counted once — over cycles × L² slots), and
images/s and GOPS (2 operations per useful MAC) at ``--fmax``. Without ``--fmax`` the clock is the
lowest post-route Fmax among the units the engine is built from, as measured by
``benchmarks/synth_units.py`` (the engine itself has not been placed and routed yet), and the
report says so. A network the engine cannot run yet is reported with the compiler's reason.
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
from hw.engine.compiler import FitError, UnsupportedNetwork, compile_network  # noqa: E402
from hw.engine.config import EngineConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "engine_throughput.json"
#: Units inside the engine whose measured Fmax bounds the engine's clock.
ENGINE_UNITS = ("threefry", "quantizer_1", "weight_update_32x512", "mac_int8_8x8")


def useful_macs(wage: WageConfig) -> dict[str, int]:
    """Multiply-accumulates of one training step, each product counted once."""
    b = wage.batch_size
    out = {"forward": 0, "error": 0, "gradient": 0}
    for layer in wage.layers:
        macs = b * layer.out_positions * layer.out_channels * layer.fan_in
        out["forward"] += macs
        out["gradient"] += macs
        if layer.index > 0:
            out["error"] += macs
    return out


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
    return known[unit], f"lowest unit Fmax ({unit}, {known[unit]:.1f} MHz; engine not routed yet)"


def measure(config: EngineConfig) -> dict:
    from hw.engine.engine import Engine
    from sim.runner import run_cocotb
    engine = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    engine["wage"] = config.wage.to_json(indent=None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counters.json"
        name = f"engine_{config.wage.net.replace('-', '_')}_b{config.batch}_l{config.lanes}"
        run_cocotb(Engine(config), name=name, test_module="sim.tb_engine", testcase="throughput",
                   parameters={"engine": engine, "out": str(out)}, timeout_s=7200)
        return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["mlp", "lenet5"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lanes", type=int, nargs="+", default=[8, 16],
                    help="array sides to measure (8: 64 MULT18X18D, fits the LFE5U-85F's 156; 16 needs 256)")
    ap.add_argument("--fmax", type=float, default=None, help="clock in MHz (default: lowest unit Fmax)")
    args = ap.parse_args(argv)
    fmax, fmax_note = (args.fmax, "given on the command line") if args.fmax else unit_fmax()
    report = {"fmax_mhz": fmax, "fmax_source": fmax_note, "batch": args.batch,
              "date": time.strftime("%Y-%m-%d %H:%M"), "runs": {}}
    for net, lanes in [(n, l) for n in args.nets for l in args.lanes]:
        key = f"{net}_l{lanes}"
        batch, note = args.batch, None
        while True:
            wage = WageConfig(net=net, batch_size=batch)
            config = EngineConfig(wage, lanes=lanes, data_words=16384, weight_words=16384,
                                  label_words=max(256, batch))
            try:
                compile_network(config)
                break
            except FitError as e:        # one block-RAM bank per scratchpad: halve the batch, say so
                if str(e).startswith("weight_words"):       # no batch makes the weights fit
                    note, batch = str(e), 0
                    break
                note = f"batch {args.batch} does not fit ({e}); measured at a smaller batch"
                batch //= 2
            except UnsupportedNetwork as e:
                note, batch = str(e), 0
                break
        if batch < 1:
            report["runs"][key] = {"status": "not run", "reason": note}
            print(f"{key}: not run: {note}")
            continue
        t = time.time()
        result = measure(config)
        c = result["counters"]
        cycles = c["run_cycles"]
        macs = useful_macs(wage)
        total = sum(macs.values())
        L = config.lanes
        dsp = L * L
        entry = {"status": "measured", "batch": batch, "note": note, "lanes": L, "mult18x18d": dsp, "fits_85f_dsps": dsp <= 156,
                 "cycles_per_step": cycles,
                 "cycles_by_phase": {k: c[f"{k}_cycles"] for k in ("fwd", "loss", "err", "grad")},
                 "array_beats": c["array_beats"], "useful_macs": macs,
                 "mac_slot_utilisation": total / (cycles * L * L),
                 "array_busy": c["array_beats"] / cycles, "sim_wall_s": round(time.time() - t, 1)}
        if fmax:
            seconds = cycles / (fmax * 1e6)
            entry["images_per_s"] = wage.batch_size / seconds
            entry["gops"] = 2 * total / seconds / 1e9
        report["runs"][key] = entry
        print(f"{key} (batch {batch}): {cycles} cycles/step {entry['cycles_by_phase']}, utilisation "
              f"{100 * entry['mac_slot_utilisation']:.1f} %"
              + (f", {entry['images_per_s']:.0f} images/s, {entry['gops']:.2f} GOPS at {fmax:.1f} MHz" if fmax else ""))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"fmax: {fmax_note}; written {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
