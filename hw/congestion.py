"""Wiring demand of a placed ECP5 design: where routing will crowd, and which logic crowds it.

nextpnr's router reports only how many wires are overused, not where or by whom. This module
reads the placed netlist nextpnr writes (``--write placed.json``; :func:`hw.synth.synthesize`
writes it in every ``place_only`` run) and estimates the routing demand per tile with RUDY
(rectangular uniform wire density: each net spreads its estimated wirelength — half the perimeter
of its pins' bounding box times a factor for its pin count — evenly over that box). It then names
what makes the hottest region hot: the design's modules (the hierarchical prefix of each net's
driver cell, ``unit.feed_a.gen``) and the source lines (the driver's ``src`` attribute, which
Amaranth sets to the Python line that made the signal).

The figures are in wire-tiles per tile. ECP5 tiles have a fixed number of routing wires each, so
the map is comparable between designs on one device: compare a design that does not route with one
that does. ``python -m hw.congestion DIR/placed.json [--depth 3] [--window 12]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CongestionError", "PlacedNet", "Placement", "pin_factor", "rudy", "Congestion", "analyse", "main"]

_BEL = re.compile(r"^X(\d+)/Y(\d+)/")
_CWD = str(Path.cwd()) + "/"          # source lines under it are shown relative to it

#: Cheng's correction of half-perimeter wirelength for a net's pin count (a Steiner tree over n
#: pins is longer than the box's half perimeter): (pins, factor), linear in between, +0.02616 a
#: pin past 50.
_PIN_FACTORS = ((3, 1.0), (4, 1.0828), (5, 1.1536), (6, 1.2206), (8, 1.3385), (10, 1.4493),
                (15, 1.6899), (20, 1.8924), (30, 2.2264), (50, 2.7933))


class CongestionError(Exception):
    """A placed netlist that cannot be read (missing, not nextpnr's JSON, not placed)."""


def pin_factor(pins: int) -> float:
    """The wirelength factor of a net with ``pins`` pins (1 up to 3 pins)."""
    if pins <= _PIN_FACTORS[0][0]:
        return 1.0
    for (n0, f0), (n1, f1) in zip(_PIN_FACTORS, _PIN_FACTORS[1:]):
        if pins <= n1:
            return f0 + (f1 - f0) * (pins - n0) / (n1 - n0)
    return _PIN_FACTORS[-1][1] + 0.02616 * (pins - _PIN_FACTORS[-1][0])


@dataclass(frozen=True)
class PlacedNet:
    """One routed signal: its driver cell's name and source line, and its pins' tiles."""
    name: str
    driver: str
    src: str
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive."""
        return min(self.xs), min(self.ys), max(self.xs), max(self.ys)

    @property
    def demand(self) -> float:
        """Estimated wirelength in tile lengths (factor × half perimeter)."""
        x0, y0, x1, y1 = self.box
        return pin_factor(len(self.xs)) * ((x1 - x0 + 1) + (y1 - y0 + 1))

    def module(self, depth: int) -> str:
        """The first ``depth`` levels of the driver's hierarchy (``unit.feed_a.gen``)."""
        return module_of(self.driver, depth)


def module_of(cell: str, depth: int) -> str:
    """Hierarchy of a cell name: its dotted components before the local name, at most ``depth``.
    Names made by tools (``$abc$…``, ``$nextpnr_…``) have no hierarchy: ``(tool)``."""
    parts = cell.split(".")
    path = []
    for part in parts[:-1]:
        if part.startswith("$"):
            break
        path.append(part)
    if not path:
        return "(tool)" if cell.startswith("$") else "(top)"
    return ".".join(path[:depth])


def _own_source(src: str) -> str:
    """The design's own line among a cell's ``src`` parts (``a.py:3|/share/lattice/cells_map.v:9``):
    the first outside the tools' technology libraries, else the first."""
    parts = [p for p in src.split("|") if p]
    own = [p for p in parts if "/share/" not in p]
    line = (own or parts or [""])[0]
    return line[len(_CWD):] if line.startswith(_CWD) else line


@dataclass
class Placement:
    """The placed netlist: device size in tiles and its nets (global clock nets left out: they use
    the dedicated clock network, not general routing)."""
    width: int
    height: int
    nets: list[PlacedNet]
    cells: int

    @classmethod
    def load(cls, path) -> "Placement":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except OSError as e:
            raise CongestionError(f"{path}: cannot read the placed netlist: {e.strerror or e}") from None
        except ValueError as e:
            raise CongestionError(f"{path}: not JSON ({e})") from None
        modules = doc.get("modules") if isinstance(doc, dict) else None
        if not isinstance(modules, dict) or not modules:
            raise CongestionError(f"{path}: no modules; expected nextpnr's --write output")
        top = modules.get("top") or next(iter(modules.values()))
        cells, names = top.get("cells", {}), top.get("netnames", {})
        globals_ = {b for n in names.values() if n.get("attributes", {}).get("ECP5_IS_GLOBAL")
                    for b in n.get("bits", []) if isinstance(b, int)}
        pins: dict[int, list[tuple[int, int]]] = defaultdict(list)
        drivers: dict[int, tuple[str, str]] = {}
        placed = 0
        for name, cell in cells.items():
            bel = cell.get("attributes", {}).get("NEXTPNR_BEL")
            found = _BEL.match(bel) if isinstance(bel, str) else None
            if found is None:
                continue
            placed += 1
            x, y = int(found[1]), int(found[2])
            directions = cell.get("port_directions", {})
            src = _own_source(str(cell.get("attributes", {}).get("src", "")))
            for port, bits in cell.get("connections", {}).items():
                for bit in bits:
                    if not isinstance(bit, int) or bit in globals_:
                        continue
                    pins[bit].append((x, y))
                    if directions.get(port) == "output":
                        drivers[bit] = (name, src)
        if not placed:
            raise CongestionError(f"{path}: no cell has a NEXTPNR_BEL; is this a placed netlist "
                                  "(nextpnr --write after placement)?")
        label = {b: n for n, v in names.items() if not v.get("hide_name") for b in v.get("bits", [])
                 if isinstance(b, int)}
        nets = []
        for bit, where in pins.items():
            if len(where) < 2:
                continue
            driver, src = drivers.get(bit, ("(undriven)", ""))
            xs, ys = zip(*where)
            nets.append(PlacedNet(label.get(bit, driver), driver, src, xs, ys))
        width = max(max(n.xs) for n in nets) + 1 if nets else 1
        height = max(max(n.ys) for n in nets) + 1 if nets else 1
        return cls(width, height, nets, placed)


def rudy(placement: Placement) -> np.ndarray:
    """Wiring demand per tile, ``[y, x]``: each net's :attr:`PlacedNet.demand` spread evenly over
    its bounding box."""
    grid = np.zeros((placement.height + 1, placement.width + 1))
    for net in placement.nets:
        x0, y0, x1, y1 = net.box
        density = net.demand / ((x1 - x0 + 1) * (y1 - y0 + 1))
        grid[y0, x0] += density
        grid[y0, x1 + 1] -= density
        grid[y1 + 1, x0] -= density
        grid[y1 + 1, x1 + 1] += density
    return grid.cumsum(0).cumsum(1)[:placement.height, :placement.width]


@dataclass
class Congestion:
    """The demand map and what fills its hottest window."""
    placement: Placement
    demand: np.ndarray
    window: tuple[int, int, int, int]          # x0, y0, x1, y1 of the hottest window, inclusive
    by_module: list[tuple[str, float, float]]  # (module, share of the window, share of all demand)
    by_src: list[tuple[str, float]]            # (source line, share of the window)
    long_nets: list[tuple[PlacedNet, float]]   # widest contributors to the window: (net, share)
    design_modules: list[tuple[str, float]]    # (module, share of all demand), largest first

    def summary(self) -> dict:
        d = self.demand[self.demand > 0]
        x0, y0, x1, y1 = self.window
        return {"tiles": [self.placement.width, self.placement.height], "cells": self.placement.cells,
                "nets": len(self.placement.nets), "total_demand": round(float(self.demand.sum()), 1),
                "peak": round(float(d.max()), 2) if d.size else 0.0,
                "p99": round(float(np.percentile(d, 99)), 2) if d.size else 0.0,
                "median": round(float(np.median(d)), 2) if d.size else 0.0,
                "window": [x0, y0, x1, y1],
                "window_mean": round(float(self.demand[y0:y1 + 1, x0:x1 + 1].mean()), 2)}

    def heatmap(self, columns: int = 64) -> str:
        """The map in characters, coarse: each character is the mean of a block of tiles, scaled
        to the peak (`` .:-=+*#%@``), row Y0 first."""
        ramp = " .:-=+*#%@"
        step = max(1, -(-self.placement.width // columns))
        h, w = self.demand.shape
        blocks = np.pad(self.demand, ((0, -h % step), (0, -w % step)))
        blocks = blocks.reshape(blocks.shape[0] // step, step, blocks.shape[1] // step, step).mean((1, 3))
        peak = blocks.max() or 1.0
        # Row 0 first: Y grows downwards on nextpnr's ECP5 grid.
        return "\n".join("".join(ramp[min(len(ramp) - 1, int(v / peak * (len(ramp) - 1) + 0.5))] for v in row)
                         for row in blocks)

    def report(self, top: int = 15) -> str:
        s = self.summary()
        x0, y0, x1, y1 = self.window
        lines = [f"{s['cells']} placed cells, {s['nets']} nets on {s['tiles'][0]}x{s['tiles'][1]} tiles; "
                 f"demand per tile (wire-tiles): median {s['median']}, 99th percentile {s['p99']}, "
                 f"peak {s['peak']}; total {s['total_demand']:.0f}",
                 f"hottest {x1 - x0 + 1}x{y1 - y0 + 1} window: X{x0}..X{x1}, Y{y0}..Y{y1}, "
                 f"mean {s['window_mean']} per tile",
                 "", "map (each character a block of tiles, scaled to the hottest block):", self.heatmap(), "",
                 "modules in the hottest window (share of its demand; share of the whole design's):"]
        lines += [f"  {share:6.1%}  {total:6.1%}  {name}" for name, share, total in self.by_module[:top]]
        lines += ["", "modules in the whole design (share of all demand):"]
        lines += [f"  {share:6.1%}  {name}" for name, share in self.design_modules[:top]]
        lines += ["", "source lines in the hottest window:"]
        lines += [f"  {share:6.1%}  {src or '(no src)'}" for src, share in self.by_src[:top]]
        lines += ["", "nets feeding the window most (share; pins; bounding box):"]
        for net, share in self.long_nets[:top]:
            bx0, by0, bx1, by1 = net.box
            lines.append(f"  {share:6.1%}  {len(net.xs):5d} pins  {bx1 - bx0 + 1:3d}x{by1 - by0 + 1:<3d}  {net.name}")
        return "\n".join(lines) + "\n"


def analyse(placement: Placement, *, window: int = 12, depth: int = 3) -> Congestion:
    """The demand map, its hottest ``window`` × ``window`` tiles, and their contributors (modules
    to ``depth`` levels of hierarchy)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r}: must be a positive number of tiles")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r}: must be a positive number of hierarchy levels")
    demand = rudy(placement)
    h, w = demand.shape
    wy, wx = min(window, h), min(window, w)
    summed = np.pad(demand, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = summed[wy:, wx:] - summed[:-wy, wx:] - summed[wy:, :-wx] + summed[:-wy, :-wx]
    y0, x0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
    x1, y1 = x0 + wx - 1, y0 + wy - 1
    inside: dict[str, float] = defaultdict(float)
    everywhere: dict[str, float] = defaultdict(float)
    by_src: dict[str, float] = defaultdict(float)
    per_net = []
    for net in placement.nets:
        bx0, by0, bx1, by1 = net.box
        module = net.module(depth)
        everywhere[module] += net.demand
        ox = min(bx1, x1) - max(bx0, x0) + 1
        oy = min(by1, y1) - max(by0, y0) + 1
        if ox <= 0 or oy <= 0:
            continue
        part = net.demand * ox * oy / ((bx1 - bx0 + 1) * (by1 - by0 + 1))
        inside[module] += part
        by_src[net.src] += part
        per_net.append((net, part))
    total_in = sum(inside.values()) or 1.0
    total_all = sum(everywhere.values()) or 1.0
    by_module = sorted(((m, v / total_in, everywhere[m] / total_all) for m, v in inside.items()),
                       key=lambda t: -t[1])
    per_net.sort(key=lambda t: -t[1])
    return Congestion(placement, demand, (int(x0), int(y0), int(x1), int(y1)), by_module,
                      sorted(((s, v / total_in) for s, v in by_src.items()), key=lambda t: -t[1]),
                      [(n, v / total_in) for n, v in per_net],
                      sorted(((m, v / total_all) for m, v in everywhere.items()), key=lambda t: -t[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.congestion", description=__doc__.split("\n\n")[0])
    ap.add_argument("placed", help="nextpnr's placed netlist (placed.json from hw.synth --place-only)")
    ap.add_argument("--window", type=int, default=12, help="side of the hottest window in tiles (12)")
    ap.add_argument("--depth", type=int, default=3, help="hierarchy levels per module name (3)")
    ap.add_argument("--top", type=int, default=15, help="rows per table (15)")
    ap.add_argument("--json", help="also write the summary and tables to this file")
    a = ap.parse_args(argv)
    try:
        result = analyse(Placement.load(a.placed), window=a.window, depth=a.depth)
    except (CongestionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.report(a.top), end="")
    if a.json:
        Path(a.json).write_text(json.dumps({
            **result.summary(),
            "by_module": [{"module": m, "window_share": round(s, 4), "design_share": round(t, 4)}
                          for m, s, t in result.by_module],
            "design_modules": [{"module": m, "design_share": round(v, 4)} for m, v in result.design_modules],
            "by_src": [{"src": s, "window_share": round(v, 4)} for s, v in result.by_src[:100]],
            "nets": [{"name": n.name, "pins": len(n.xs), "box": list(n.box), "window_share": round(v, 4)}
                     for n, v in result.long_nets[:100]]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
