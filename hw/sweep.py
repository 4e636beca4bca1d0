"""Design-space sweep of board builds: array sizes × clock targets → Fmax, resources, images/s.

    python -m hw.build --sweep [--board ulx3s] [--variant 85F] [--config FILE]
                       [--lanes 4 8] [--freqs 50 75 100] [--jobs N] [--out DIR] [--force]

Every point (lanes L, clock target f) is a full :func:`hw.build.build_bitstream` of the board's
default network (or ``--config``'s) on an L×L engine whose memories are sized to what the network
needs at that L (rounded up to 512 words). Points run in parallel, ``--jobs`` at a time (default: the
core count), each in ``DIR/L{L}-f{f}/`` with its log in ``build.log``. Results are stored in
``DIR/sweep.json`` as each point ends, so an interrupted sweep resumes where it stopped (``--force``
reruns every point). At the end it prints the table and writes ``DIR/sweep.md`` and ``DIR/sweep.png``
(Fmax, LUT use and predicted images/s against L, one line per clock target).

Predicted images/s = clock × batch / (array beats per step ÷ 0.98): the compiler counts the array
beats a step takes (:func:`hw.engine.compiler.array_beats`, equal to the engine's own counter), and the
array is busy in 98 % of the cycles of a fully connected step (measured on Verilator, MLP at L = 16:
311,296 beats in 317,770 cycles). The clock is the target when timing is met, else the achieved Fmax
(what a rebuild at that clock would run at); a point that does not fit the part has no rate.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hw.engine.compiler import FitError, UnsupportedNetwork, array_beats, compile_network
from hw.engine.config import EngineConfig

__all__ = ["SweepError", "SweepPoint", "ARRAY_BUSY", "point_config", "predicted_images_per_s", "run_sweep", "sweep_table",
           "sweep_plot"]

class SweepError(ValueError):
    """A sweep parameter is bad or the results directory holds another sweep; the message says which."""


#: Fraction of a step's cycles in which the array takes a beat (measured, see the module docstring).
ARRAY_BUSY = 0.98
WORD_ROUND = 512


@dataclass(frozen=True)
class SweepPoint:
    lanes: int
    freq_mhz: float

    @property
    def key(self) -> str:
        return f"L{self.lanes}-f{self.freq_mhz:g}"


def _round_up(n: int, step: int = WORD_ROUND) -> int:
    return max(step, -(-n // step) * step)


def point_config(base: EngineConfig, lanes: int) -> EngineConfig:
    """``base`` with ``lanes`` lanes and memories sized to its network's need at that width."""
    probe = base.replace(lanes=lanes, data_words=1 << 20, weight_words=1 << 20, external_words=0,
                         external_weight_words=0, target="ecp5")
    usage = compile_network(probe).usage
    data = max(usage["act"][0], usage["err"][0])
    return probe.replace(data_words=_round_up(data), weight_words=_round_up(usage["weights"][0]),
                         label_words=max(base.label_words, base.batch))


def predicted_images_per_s(config: EngineConfig, clock_mhz: float) -> float:
    cycles = array_beats(compile_network(config)) / ARRAY_BUSY
    return clock_mhz * 1e6 * config.batch / cycles


def _build_point(board_name: str, variant: str, config_dict: dict, point: SweepPoint, out_dir: str, seed: int,
                 timeout_s: float, placer: str, timing_driven: bool = True) -> dict:
    """One point in a worker process: the build, its log in out_dir/build.log; a result dict."""
    from hw.build import BuildError, build_bitstream
    from hw.synth import SynthError
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = EngineConfig.from_dict(config_dict)
    start = time.monotonic()
    with open(out / "build.log", "w") as log:
        def progress(msg):
            log.write(msg + "\n")
            log.flush()
        try:
            report = build_bitstream(board_name, variant, config, freq_mhz=point.freq_mhz, seed=seed, out_dir=out,
                                     placer=placer, timing_driven=timing_driven, timeout_s=timeout_s,
                                     progress=progress).to_dict()
            status = "met"
        except (BuildError, SynthError) as e:
            log.write(f"error: {e}\n")
            path = out / "report.json"
            if not path.exists():
                return {"status": "failed", "error": str(e), "seconds": round(time.monotonic() - start, 1)}
            report, status = json.loads(path.read_text()), "not met"
    return {"status": status, "fmax_mhz": report["fmax_mhz"], "freq_mhz": report["freq_mhz"],
            "resources": report["resources"], "bitstream": report["bitstream"],
            "seconds": round(time.monotonic() - start, 1)}


def run_sweep(board_name: str, variant: str, base: EngineConfig, lanes: list[int], freqs: list[float], out_dir, *,
              jobs: int | None = None, seed: int = 1, timeout_s: float = 4 * 3600.0, force: bool = False,
              placer: str = "heap", timing_driven: bool = True, progress: Callable[[str], None] = print,
              build_point: Callable = _build_point) -> dict:
    """Run the sweep (see the module docstring); returns the contents of ``sweep.json``."""
    for name, values in (("lanes", lanes), ("freqs", freqs)):
        if not values:
            raise SweepError(f"{name}: at least one value is needed")
    for L in lanes:
        if not isinstance(L, int) or isinstance(L, bool) or L < 4 or L > 64 or L & (L - 1):
            raise SweepError(f"lanes={L!r}: must be a power of two in 4..64")
    for f in freqs:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 3.125 <= f <= 400:
            raise SweepError(f"freq={f!r}: must be a clock in 3.125..400 MHz")
    from hw.synth import PLACERS
    if placer not in PLACERS:
        raise SweepError(f"placer={placer!r}: must be one of {', '.join(PLACERS)}")
    if not isinstance(timing_driven, bool):
        raise SweepError(f"timing_driven={timing_driven!r}: must be True or False")
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs={jobs!r}: must be a positive integer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "sweep.json"
    results = json.loads(results_path.read_text()) if results_path.exists() and not force else {}
    results.setdefault("board", board_name)
    results.setdefault("variant", variant)
    results.setdefault("points", {})
    if (results["board"], results["variant"]) != (board_name, variant):
        raise SweepError(f"{results_path} holds a sweep of {results['board']} {results['variant']}, not "
                         f"{board_name} {variant}; use another --out or --force")
    points = {}
    for L in lanes:
        try:
            config = point_config(base, L)
        except (FitError, UnsupportedNetwork, ValueError) as e:
            for f in freqs:
                p = SweepPoint(L, f)
                results["points"][p.key] = {"lanes": L, "target_mhz": f, "status": "invalid", "error": str(e)}
            continue
        for f in freqs:
            points[SweepPoint(L, f)] = config

    def store(point, config, result):
        entry = {"lanes": point.lanes, "target_mhz": point.freq_mhz, "data_words": config.data_words,
                 "weight_words": config.weight_words, "batch": config.batch, "net": config.wage.net, **result}
        if result.get("status") in ("met", "not met"):
            clock = result["freq_mhz"] if result["status"] == "met" else result["fmax_mhz"]
            entry["images_per_s"] = round(predicted_images_per_s(config, clock), 1)
        results["points"][point.key] = entry
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, results_path)

    todo = [(p, c) for p, c in points.items()
            if results["points"].get(p.key, {}).get("status") not in ("met", "not met")]
    done = len(points) - len(todo)
    progress(f"sweep {board_name} {variant}: {len(points)} points ({done} already done), {jobs} at a time, in {out}")
    if jobs == 1:
        for p, c in todo:
            progress(f"  {p.key}: building ...")
            store(p, c, build_point(board_name, variant, c.to_dict(), p, str(out / p.key), seed, timeout_s, placer,
                                    timing_driven))
            progress(f"  {p.key}: {results['points'][p.key]['status']}")
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(build_point, board_name, variant, c.to_dict(), p, str(out / p.key), seed,
                                   timeout_s, placer, timing_driven): (p, c) for p, c in todo}
            for fut in concurrent.futures.as_completed(futures):
                p, c = futures[fut]
                try:
                    result = fut.result()
                except Exception as e:                 # a crashed worker is a failed point, not a lost sweep
                    result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                store(p, c, result)
                progress(f"  {p.key}: {results['points'][p.key]['status']}")
    table = sweep_table(results)
    (out / "sweep.md").write_text(table + "\n")
    sweep_plot(results, out / "sweep.png")
    progress(table)
    return results


def _res(entry, name):
    r = entry.get("resources", {}).get(name)
    return f"{r['used']} ({r['percent']:.0f} %)" if r else "-"


def sweep_table(results: dict) -> str:
    """The sweep as a Markdown table, and its best point (highest predicted images/s)."""
    rows = ["| lanes | target MHz | status | Fmax MHz | LUT4 | FF | DP16KD | MULT18X18D | images/s |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    entries = sorted(results["points"].values(), key=lambda e: (e["lanes"], e["target_mhz"]))
    for e in entries:
        fmax = f"{e['fmax_mhz']:.1f}" if "fmax_mhz" in e else "-"
        rate = f"{e['images_per_s']:,.0f}" if "images_per_s" in e else "-"
        status = e["status"] if "error" not in e else f"{e['status']}: {e['error'].splitlines()[0][:60]}"
        rows.append(f"| {e['lanes']} | {e['target_mhz']:g} | {status} | {fmax} | {_res(e, 'TRELLIS_COMB')} | "
                    f"{_res(e, 'TRELLIS_FF')} | {_res(e, 'DP16KD')} | {_res(e, 'MULT18X18D')} | {rate} |")
    rated = [e for e in entries if "images_per_s" in e]
    if rated:
        best = max(rated, key=lambda e: e["images_per_s"])
        rows.append(f"\nbest point: {best['lanes']} lanes at {best['target_mhz']:g} MHz target "
                    f"({best['status']}, Fmax {best['fmax_mhz']:.1f} MHz): {best['images_per_s']:,.0f} images/s predicted")
    return "\n".join(rows)


def sweep_plot(results: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    entries = [e for e in results["points"].values() if "fmax_mhz" in e]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for target in sorted({e["target_mhz"] for e in entries}):
        mine = sorted((e for e in entries if e["target_mhz"] == target), key=lambda e: e["lanes"])
        x = [e["lanes"] for e in mine]
        axes[0].plot(x, [e["fmax_mhz"] for e in mine], "o-", label=f"target {target:g} MHz")
        axes[1].plot(x, [e["resources"]["TRELLIS_COMB"]["percent"] for e in mine], "o-")
        axes[2].plot(x, [e.get("images_per_s", 0) for e in mine], "o-")
    for ax, title in zip(axes, ("Fmax (MHz)", "LUT4 slots used (%)", "predicted images/s")):
        ax.set_title(title)
        ax.set_xlabel("lanes (L×L array)")
        ax.grid(alpha=0.3)
    if entries:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"hw.build sweep: {results['board']} {results['variant']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
