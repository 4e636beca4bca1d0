"""Every register-to-register path's slack, from the SDF file nextpnr writes (``--sdf``).

nextpnr reports one critical path per clock, and after placement alone (``--no-route``) none at
all. A design far from its target (the engine: thousands of endpoints failing by several ns) needs
the whole picture: which start and end registers the failing paths join, and through which
signals. nextpnr's SDF has what its own timing analysis uses: each cell's delays (``IOPATH``),
each connection's delay (``INTERCONNECT``: routed, or nextpnr's estimate when the design is only
placed) and each register input's setup time (``SETUPHOLD``). :func:`analyse_sdf` propagates
arrival times through that graph (maximum delays, one clock, every path from a clock-to-output
delay to a setup check; paths from input pins are left out, as nextpnr's ``<async>``) and keeps each node's latest predecessor, so that the worst path into any
endpoint can be traced back.

:meth:`SdfTiming.classes` groups the failing endpoints by (start register, end register) with
bit indices dropped — one line per *kind* of path, its endpoint count and worst slack — and
:meth:`SdfTiming.through` counts the signals the endpoints' worst paths pass through: the nets
whose fix would move most endpoints. Names are yosys's: registers are exact
(``unit.conv.pos_sel_TRELLIS_FF_Q_3`` is bit 3 of ``pos_sel``), while a LUT is named after one of
the nets it touches, so the signals "through" a path are a good hint, not a proof.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SdfError", "SdfTiming", "analyse_sdf", "signal_name"]

#: The arrival time of a node that no clocked start reaches (input pins and what they drive alone).
UNCLOCKED = -1e9
#: Pins that carry a clock: not data inputs of the timing graph.
_CLOCK_PINS = re.compile(r"^(CLK[A-Z0-9]*|WCK|CLKI)$")
_VALUES = r"\(([-\d.]*):([-\d.]*):([-\d.]*)\)"
_IOPATH = re.compile(r"\(IOPATH\s+(\S+)\s+(\S+)\s+" + _VALUES)
_INTERCONNECT = re.compile(r"\(INTERCONNECT\s+(\S+)\s+(\S+)\s+" + _VALUES)
_SETUP = re.compile(r"\(SETUPHOLD\s+\((?:posedge|negedge)\s+(\S+)\)\s+\((?:posedge|negedge)\s+(\S+)\)\s+" + _VALUES)
_INSTANCE = re.compile(r"\(INSTANCE\s*(\S*)\)")
_TIMESCALE = re.compile(r"\(TIMESCALE\s+(\d+)\s*(ps|ns)\)")
#: What yosys and nextpnr append to a signal's name when they name a cell after it.
_CELL_SUFFIX = re.compile(r"(_TRELLIS_FF_Q|_TRELLIS_DPR16X4|_(?:LUT4|CCU2C|PFUMX|L6MUX21|DP16KD|MULT18X18D)_|"
                          r"\$CCU2_COMB|\$nextpnr|\$TRELLIS_IO|_dp16kd|_dsp\b).*$")


class SdfError(ValueError):
    """The SDF file is missing or not what nextpnr writes."""


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def signal_name(instance: str) -> str:
    """The signal a cell instance is named after (``unit.a.b_TRELLIS_FF_Q_3`` → ``unit.a.b``)."""
    name = _CELL_SUFFIX.sub("", instance)
    return name or instance


def _kind(name: str) -> str:
    """A signal name with its numbers replaced by ``#`` (``pos_d3_last`` → ``pos_d#_last``), so
    that the bits and copies of one structure group together."""
    return re.sub(r"\d+", "#", name)


@dataclass(frozen=True)
class Endpoint:
    """A setup check: the register input ``pin`` of ``instance`` with its worst path's slack."""
    instance: str
    pin: str
    arrival_ns: float
    required_ns: float

    @property
    def slack_ns(self) -> float:
        return self.required_ns - self.arrival_ns


class SdfTiming:
    """Arrival times of every node (``instance/pin``) of an SDF timing graph at one clock period."""

    def __init__(self, period_ns: float, arrival: dict, previous: dict, endpoints: list[Endpoint]):
        self.period_ns = period_ns
        self._arrival, self._previous = arrival, previous
        #: every setup check, worst slack first
        self.endpoints = sorted(endpoints, key=lambda e: e.slack_ns)

    @property
    def worst_slack_ns(self) -> float:
        return self.endpoints[0].slack_ns if self.endpoints else 0.0

    @property
    def fmax_mhz(self) -> float:
        """1 / (the period that the worst endpoint would just meet)."""
        return 1000.0 / (self.period_ns - self.worst_slack_ns) if self.endpoints else float("inf")

    def failing(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.slack_ns < 0]

    def path(self, endpoint: Endpoint) -> list[tuple[str, float]]:
        """The worst path into ``endpoint``: (``instance/pin``, arrival in ns) from its start."""
        node = f"{endpoint.instance}/{endpoint.pin}"
        out = []
        while node is not None:
            out.append((node, self._arrival.get(node, 0.0)))
            node = self._previous.get(node)
        return out[::-1]

    def _start(self, endpoint: Endpoint) -> str:
        return self.path(endpoint)[0][0].rsplit("/", 1)[0]

    def classes(self, slack_below_ns: float = 0.0) -> list[dict]:
        """Endpoints with slack below ``slack_below_ns`` grouped by (start, end) signal kinds:
        ``{"start", "end", "endpoints", "worst_slack_ns", "example"}``, most endpoints first."""
        groups: dict = {}
        for e in self.endpoints:
            if e.slack_ns >= slack_below_ns:
                break
            key = (_kind(signal_name(self._start(e))), _kind(signal_name(e.instance)) + "." + e.pin)
            g = groups.setdefault(key, {"start": key[0], "end": key[1], "endpoints": 0,
                                        "worst_slack_ns": round(e.slack_ns, 3), "example": e})
            g["endpoints"] += 1
        return sorted(groups.values(), key=lambda g: (-g["endpoints"], g["worst_slack_ns"]))

    def through(self, slack_below_ns: float = 0.0) -> list[tuple[str, int]]:
        """(signal kind, number of endpoints with slack below ``slack_below_ns`` whose worst path
        passes through it), most first; start and end registers included."""
        counts: collections.Counter = collections.Counter()
        for e in self.endpoints:
            if e.slack_ns >= slack_below_ns:
                break
            counts.update({_kind(signal_name(node.rsplit("/", 1)[0])) for node, _ in self.path(e)})
        return counts.most_common()

    def report(self, classes: int = 25, paths: int = 5, slack_below_ns: float = 0.0) -> str:
        """A text report: the slack histogram's failing count, the path classes, the signals most
        failing paths pass through, and the worst few paths hop by hop."""
        failing = [e for e in self.endpoints if e.slack_ns < slack_below_ns]
        lines = [f"period {self.period_ns:.3f} ns: {len(self.endpoints)} setup checks, {len(failing)} with slack "
                 f"< {slack_below_ns:g} ns; worst slack {self.worst_slack_ns:.3f} ns ({self.fmax_mhz:.2f} MHz)",
                 "", f"path classes (endpoints, worst slack ns, start -> end):"]
        for g in self.classes(slack_below_ns)[:classes]:
            lines.append(f"  {g['endpoints']:6d}  {g['worst_slack_ns']:8.3f}  {g['start']}  ->  {g['end']}")
        lines += ["", "signals on the most failing paths (endpoints through it):"]
        for name, n in self.through(slack_below_ns)[:classes]:
            lines.append(f"  {n:6d}  {name}")
        shown = set()
        for e in failing:
            key = (_kind(signal_name(self._start(e))), _kind(signal_name(e.instance)), e.pin)
            if key in shown:
                continue
            shown.add(key)
            if len(shown) > paths:
                break
            lines += ["", f"path to {e.instance}/{e.pin}: slack {e.slack_ns:.3f} ns"]
            last = None
            for node, t in self.path(e):
                instance, pin = node.rsplit("/", 1)
                delay = t - last if last is not None else t
                lines.append(f"  {t:7.3f} (+{delay:5.3f})  {pin:<5} {instance}")
                last = t
        return "\n".join(lines) + "\n"


def analyse_sdf(path, freq_mhz: float) -> SdfTiming:
    """Read nextpnr's SDF at ``path`` and time it at ``freq_mhz`` (one clock domain)."""
    if not isinstance(freq_mhz, (int, float)) or isinstance(freq_mhz, bool) or not freq_mhz > 0:
        raise ValueError(f"freq_mhz={freq_mhz!r}: must be a positive number")
    path = Path(path)
    try:
        text = path.open()
    except OSError as e:
        raise SdfError(f"{path}: cannot read the SDF file ({e.strerror})") from None
    scale = None                              # ns per SDF time unit
    edges = collections.defaultdict(list)     # node -> [(predecessor, delay ns)]
    launch: dict[str, float] = {}             # register outputs: clock-to-output delay
    setup: list[tuple[str, str, float]] = []
    instance = None
    with text:
        for line in text:
            s = line.strip()
            if s.startswith("(INTERCONNECT"):
                m = _INTERCONNECT.match(s)
                src, dst = _unescape(m.group(1)), _unescape(m.group(2))
                if _CLOCK_PINS.match(dst.rsplit("/", 1)[-1]):
                    continue
                edges[dst].append((src, float(m.group(5) or 0) * scale))
            elif s.startswith("(IOPATH"):
                m = _IOPATH.match(s)
                a, b, d = m.group(1), m.group(2), float(m.group(5) or 0) * scale
                if _CLOCK_PINS.match(a):
                    node = f"{instance}/{b}"
                    launch[node] = max(launch.get(node, 0.0), d)
                else:
                    edges[f"{instance}/{b}"].append((f"{instance}/{a}", d))
            elif s.startswith("(SETUPHOLD"):
                m = _SETUP.match(s)
                setup.append((instance, m.group(1), float(m.group(3) or 0) * scale))
            elif s.startswith("(INSTANCE"):
                instance = _unescape(_INSTANCE.match(s).group(1))
            elif s.startswith("(TIMESCALE"):
                m = _TIMESCALE.match(s)
                if not m:
                    raise SdfError(f"{path}: unsupported {s}")
                scale = int(m.group(1)) * (1e-3 if m.group(2) == "ps" else 1.0)
    if scale is None:
        raise SdfError(f"{path}: no TIMESCALE: not an SDF file nextpnr wrote")

    arrival: dict[str, float] = {}
    previous: dict[str, str | None] = {}

    def settle(node: str) -> float:
        # iterative depth-first evaluation: paths run thousands of nodes deep through carry chains
        stack = [node]
        while stack:
            n = stack[-1]
            if n in arrival:
                stack.pop()
                continue
            pending = [p for p, _ in edges.get(n, ()) if p not in arrival]
            if pending:
                if any(p in previous and p not in arrival for p in pending):
                    raise SdfError(f"{path}: combinational loop through {n}")
                previous.setdefault(n, None)          # on the stack
                stack.extend(pending)
                continue
            best, via = launch.get(n, UNCLOCKED), None
            for p, d in edges.get(n, ()):
                if arrival[p] + d > best:
                    best, via = arrival[p] + d, p
            arrival[n], previous[n] = best, via
            stack.pop()
        return arrival[node]

    period = 1000.0 / freq_mhz
    endpoints = [Endpoint(inst, pin, settle(f"{inst}/{pin}"), period - t) for inst, pin, t in setup]
    # paths from input pins (no clock launches them) are not register-to-register paths
    endpoints = [e for e in endpoints if e.arrival_ns > UNCLOCKED / 2]
    return SdfTiming(period, arrival, previous, endpoints)
