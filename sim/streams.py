"""cocotb 2 testbench components for ``amaranth.lib.stream`` interfaces (cocotbext-axi style).

Runs inside the simulator process (imported by ``sim/tb_*.py``); it imports nothing heavy.

Typical bench (the harness of :func:`sim.runner.run_cocotb` generates ``clk`` and ``rst``)::

    import random, cocotb
    from sim.streams import StreamSource, StreamSink, Scoreboard, sim_params, reset_dut

    @cocotb.test()
    async def fifo_random(dut):
        p = sim_params()                          # the dict given to run_cocotb(parameters=...)
        rng = random.Random(cocotb.RANDOM_SEED)   # the seed run_cocotb printed
        sb = Scoreboard("fifo")
        src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, rng=rng,
                           stall_probability=0.3)
        snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, rng=rng,
                         backpressure_probability=0.3, callback=lambda v: sb.compare("o", v))
        await reset_dut(dut)                      # fresh design for every test
        beats = [rng.getrandbits(8) for _ in range(1000)]
        for b in beats:
            sb.expect("o", b)
        src.send(beats)
        await snk.wait_count(len(beats))
        sb.check_empty()

Timing model (why it works the same on every simulator, Verilator included)
--------------------------------------------------------------------------
Drivers write *just after* a rising edge (``await RisingEdge(clk)``), and every handshake is
sampled in the **ReadOnly** phase of the same time step, i.e. after all combinational logic
has settled and before the next edge: ``valid & ready`` seen there is exactly what the next
rising edge will transfer. Signals are never read right after ``RisingEdge`` (Verilator shows
the post-edge register values there, event-driven simulators the pre-edge ones). A sink hands a
beat on (queue, ``callback``, ``received``) only once that next edge has happened, so when
``wait_count(n)`` returns the ``n`` beats really have left the design.

Payloads are plain non-negative ints: the flattened bits of the Amaranth payload (a
``data.ArrayLayout`` of ``n`` lanes puts lane 0 in the low bits; see :func:`pack_lanes` and
:func:`unpack_lanes`). ``ready``/``payload`` may be ``None`` for streams without them.

cocotb 2 notes: ``Timer(5, unit="ns")`` (``units=`` is deprecated); a vector's ``.value`` is a
``LogicArray`` (``.to_unsigned()``/``.to_signed()``; ``int()`` works), a 1-bit signal's is a
``Logic``; assigning a negative int to a vector is allowed only if it fits as two's complement,
so we always write unsigned bit patterns. Wide values (thousands of bits) move in one call as
Python ints (``benchmarks/sim_speed.py`` moves whole tiles that way).
"""

from __future__ import annotations

import collections
import json
import os
import random
from typing import Any, Callable, Iterable

import cocotb
from cocotb.triggers import Event, ReadOnly, RisingEdge

__all__ = [
    "PARAMS_ENV", "sim_params", "wait_reset", "reset_dut", "read_int", "StreamSource", "StreamSink",
    "StreamProtocolError", "Scoreboard", "ScoreboardMismatch", "pack_lanes", "unpack_lanes",
]

#: Same as ``sim.runner.PARAMS_ENV`` (not imported: that module pulls in Amaranth).
PARAMS_ENV = "WAGE_SIM_PARAMS"


def sim_params() -> dict:
    """The ``parameters`` dict given to :func:`sim.runner.run_cocotb` (``{}`` if none)."""
    return json.loads(os.environ.get(PARAMS_ENV) or "{}")


def read_int(handle) -> int:
    """Unsigned integer value of a signal (scalar or vector); raises on X/Z."""
    v = handle.value
    try:
        return v.to_unsigned()
    except AttributeError:  # 1-bit signal: a Logic
        return int(v)


async def wait_reset(dut, *, clk: str = "clk", rst: str = "rst") -> None:
    """Wait until ``rst`` is low; return just after a rising edge.

    On return the design has already seen one rising edge out of reset; values written now are
    sampled by the next rising edge. Returns after one edge if reset is already released.
    """
    clk_h, rst_h = getattr(dut, clk), getattr(dut, rst)
    edge, ro = RisingEdge(clk_h), ReadOnly()
    while True:
        await edge
        await ro
        if not read_int(rst_h):
            break
    await edge


async def reset_dut(dut, cycles: int = 2, *, clk: str = "clk", rst: str = "rst",
                    rst_req: str = "rst_req") -> None:
    """Give the design a fresh reset, then return just after a rising edge (as :func:`wait_reset`).

    All cocotb tests of a module share one simulation and the harness resets only at time 0,
    so call this first in every test that needs a clean design. During the power-on reset it just
    waits for it; afterwards it drives the harness input ``rst_req`` high for ``cycles`` rising
    edges. Signals driven by a previous test keep their values (cocotb cancels its coroutines):
    construct new sources/sinks (they drive ``valid``/``ready`` low at once) *before* calling this.
    """
    clk_h, rst_h = getattr(dut, clk), getattr(dut, rst)
    edge, ro = RisingEdge(clk_h), ReadOnly()
    await edge
    await ro
    if read_int(rst_h):                      # power-on reset still running
        await wait_reset(dut, clk=clk, rst=rst)
        return
    await edge
    req = getattr(dut, rst_req)
    req.value = 1
    for _ in range(cycles):
        await edge
    req.value = 0
    await wait_reset(dut, clk=clk, rst=rst)


# ---------------------------------------------------------------------------------------------
# Lanes


def _check_width(width: int) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width={width!r}: must be a positive integer")


def pack_lanes(values: Iterable[int], width: int, signed: bool = False) -> int:
    """Pack lane values into one int, lane 0 in the least significant ``width`` bits.

    This is the bit layout of an Amaranth ``data.ArrayLayout(shape, n)`` payload. Signed lanes
    are stored in two's complement. A value outside the lane's range raises ``ValueError``.
    """
    _check_width(width)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    mask = (1 << width) - 1
    out = 0
    for i, v in enumerate(values):
        v = int(v)
        if not lo <= v <= hi:
            raise ValueError(f"lane {i}: value {v} out of range [{lo}, {hi}] for "
                             f"{'signed' if signed else 'unsigned'}({width})")
        out |= (v & mask) << (i * width)
    return out


def unpack_lanes(value: int, n: int, width: int, signed: bool = False) -> list[int]:
    """Inverse of :func:`pack_lanes`: ``n`` lanes of ``width`` bits (sign-extended if ``signed``)."""
    _check_width(width)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r}: must be a non-negative integer")
    value = int(value)
    if value < 0 or value >> (n * width):
        raise ValueError(f"value {value:#x} does not fit in {n} lanes of {width} bits")
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    out = []
    for i in range(n):
        v = (value >> (i * width)) & mask
        if signed and v & sign:
            v -= 1 << width
        out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# Source and sink


class StreamProtocolError(AssertionError):
    """A stream broke the rules (payload changed or valid dropped before the beat was taken)."""


class StreamSource:
    """Drive a stream: ``send()`` queues payloads, a background coroutine presents them.

    Rules kept: ``valid`` is decided before ``ready`` is looked at (never depends on it); the
    payload is written only while ``valid`` is low, so it is stable until taken. With
    ``stall_probability`` p > 0, each cycle in which a beat could start is skipped with
    probability p (random idle cycles between beats). ``rng`` is a ``random.Random``.

    Attributes: ``sent`` (beats taken), ``cycle`` (rising edges seen while busy).
    """

    def __init__(self, clk, valid, ready, payload, *, rng: random.Random,
                 stall_probability: float = 0.0, name: str = "source"):
        if not 0.0 <= stall_probability < 1.0:
            raise ValueError(f"stall_probability={stall_probability!r}: must be in [0, 1)")
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng, self.stall_probability, self.name = rng, stall_probability, name
        self.sent = 0
        self._queue: collections.deque = collections.deque()
        self._wake = Event()
        self._idle = Event()
        self._idle.set()
        self._busy = False
        valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, values: int | Iterable[int]) -> None:
        """Queue one payload or an iterable of payloads (non-negative ints)."""
        if isinstance(values, int):
            values = (values,)
        self._queue.extend(int(v) for v in values)
        if self._queue:
            self._idle.clear()
            self._wake.set()

    def __len__(self) -> int:
        """Beats queued and not yet taken (including the one being presented)."""
        return len(self._queue)

    def idle(self) -> bool:
        return not self._queue

    async def wait_idle(self) -> None:
        """Wait until every queued beat has been taken."""
        if self._queue:
            await self._idle.wait()

    def stop(self) -> None:
        """Cancel the driver coroutine (``valid`` is left as it is)."""
        self._task.cancel()

    async def _run(self) -> None:
        edge, ro = RisingEdge(self.clk), ReadOnly()
        valid, ready, payload = self.valid, self.ready, self.payload
        q, rng, p = self._queue, self.rng, self.stall_probability
        presenting = taken = False
        while True:
            if not q and not presenting:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            await edge
            if presenting and taken:
                q.popleft()
                self.sent += 1
                presenting = False
            if not presenting:
                if q and (p == 0.0 or rng.random() >= p):
                    if payload is not None:
                        payload.value = q[0]
                    valid.value = 1
                    presenting = True
                else:
                    valid.value = 0
            if presenting:
                await ro
                taken = ready is None or bool(ready.value)


class StreamSink:
    """Accept a stream: taken payloads go to ``queue`` (or ``callback(value)`` if given).

    With ``backpressure_probability`` p > 0, ``ready`` is low in a random fraction p of cycles.
    With ``check_protocol`` (default), a beat offered but not taken (``valid & ~ready``) must be
    offered again, with the same payload, in the next cycle; otherwise
    :class:`StreamProtocolError` names the cycle (rising edges since the sink started) and the
    values. ``callback`` runs just after the rising edge that transferred the beat (it may write
    signals). Exceptions raised here (including from ``callback``) fail the running cocotb test.

    While ``valid`` is low and nothing is held, the sink does not wake on every clock edge: it
    waits for ``valid`` to rise (a value-change trigger), so a long idle stretch — an engine
    computing for millions of cycles before it answers — costs no Python time per cycle.

    Attributes: ``received`` (beats taken), ``cycle`` (rising edges the sink woke on; idle
    stretches are skipped, so this is not the simulation's cycle count).
    """

    def __init__(self, clk, valid, ready, payload, *, rng: random.Random,
                 backpressure_probability: float = 0.0, check_protocol: bool = True,
                 callback: Callable[[int], Any] | None = None, name: str = "sink"):
        if not 0.0 <= backpressure_probability < 1.0:
            raise ValueError(f"backpressure_probability={backpressure_probability!r}: must be in [0, 1)")
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng, self.backpressure_probability = rng, backpressure_probability
        self.check_protocol, self.callback, self.name = check_protocol, callback, name
        self.queue: collections.deque = collections.deque()
        self.received = 0
        self.cycle = 0
        self._event = Event()
        if ready is not None:
            ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def __len__(self) -> int:
        return len(self.queue)

    async def recv(self) -> int:
        """Next taken payload (waits for it). Not usable together with ``callback``."""
        while not self.queue:
            self._event.clear()
            await self._event.wait()
        return self.queue.popleft()

    async def wait_count(self, n: int) -> None:
        """Wait until ``n`` beats in total have been taken."""
        while self.received < n:
            self._event.clear()
            await self._event.wait()

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        edge, ro = RisingEdge(self.clk), ReadOnly()
        valid, ready, payload = self.valid, self.ready, self.payload
        rng, p, check, cb = self.rng, self.backpressure_probability, self.check_protocol, self.callback
        rise = RisingEdge(valid)
        held = None          # payload offered but not taken last cycle
        taken = None         # payload seen with valid & ready in ReadOnly: transferred at the next edge
        r_now = None
        woken = False        # resumed by `valid` rising, in the time step of the clock edge that raised it
        while True:
            if not woken:
                await edge
            woken = False
            self.cycle += 1
            if taken is not None:  # the edge has happened: the beat is ours now
                self.received += 1
                if cb is not None:
                    cb(taken)
                else:
                    self.queue.append(taken)
                self._event.set()
                taken = None
            if ready is not None:
                r = p == 0.0 or rng.random() >= p
                if r != r_now:
                    ready.value = int(r)
                    r_now = r
            else:
                r = True
            await ro
            v = bool(valid.value)
            if not v:
                if check and held is not None:
                    raise StreamProtocolError(
                        f"{self.name}: cycle {self.cycle}: valid dropped while a beat ({held:#x}) was "
                        f"offered and not taken")
                if taken is None:
                    await rise       # idle: sleep until a beat is offered (valid never waits for ready)
                    woken = True
                continue
            data = read_int(payload) if payload is not None else 0
            if check and held is not None and data != held:
                raise StreamProtocolError(
                    f"{self.name}: cycle {self.cycle}: payload changed from {held:#x} to {data:#x} while "
                    f"valid was high and ready low")
            if r:
                held = None
                taken = data
            else:
                held = data


# ---------------------------------------------------------------------------------------------
# Scoreboard


class ScoreboardMismatch(AssertionError):
    """A compared value differed from the expected one (or nothing was expected)."""


def _fmt(v) -> str:
    return f"{v:#x} ({v})" if isinstance(v, int) else repr(v)


class Scoreboard:
    """Per-name FIFO queues of expected values, compared in order as results arrive.

    ``expect(name, value)`` queues; ``compare(name, got)`` pops and checks. A mismatch names the
    stream, the beat index (0-based, per name), expected and got values, and for ints their XOR
    and the differing bit positions. With ``fail_fast`` (default) it raises
    :class:`ScoreboardMismatch` at once, else it is recorded and raised by :meth:`check_empty`.
    """

    def __init__(self, name: str = "scoreboard", *, fail_fast: bool = True, log=None):
        self.name, self.fail_fast = name, fail_fast
        self.log = log
        self.expected: dict[str, collections.deque] = {}
        self.matches: collections.Counter = collections.Counter()
        self.compared: collections.Counter = collections.Counter()
        self.mismatches: list[str] = []

    def expect(self, name: str, value) -> None:
        self.expected.setdefault(name, collections.deque()).append(value)

    def expect_many(self, name: str, values: Iterable) -> None:
        self.expected.setdefault(name, collections.deque()).extend(values)

    @property
    def total_matches(self) -> int:
        return sum(self.matches.values())

    def compare(self, name: str, got) -> bool:
        """Check ``got`` against the oldest expectation for ``name``; True on a match."""
        index = self.compared[name]
        self.compared[name] += 1
        q = self.expected.get(name)
        if not q:
            return self._fail(f"{self.name}: '{name}' beat {index}: got {_fmt(got)} but nothing was expected")
        exp = q.popleft()
        if exp == got:
            self.matches[name] += 1
            return True
        msg = f"{self.name}: '{name}' beat {index}: expected {_fmt(exp)}, got {_fmt(got)}"
        if isinstance(exp, int) and isinstance(got, int):
            x = exp ^ got
            msg += f", xor {x:#x}"
            if x > 0:
                bits = [i for i in range(x.bit_length()) if x >> i & 1]
                msg += f" (bit{'s' if len(bits) > 1 else ''} {', '.join(map(str, bits[:16]))}" \
                       f"{', ...' if len(bits) > 16 else ''})"
        return self._fail(msg)

    def _fail(self, msg: str) -> bool:
        if self.fail_fast:
            raise ScoreboardMismatch(msg)
        self.mismatches.append(msg)
        if self.log is not None:
            self.log.error(msg)
        return False

    def check_empty(self) -> None:
        """Raise if any expectation is left over or a mismatch was recorded; names what is left."""
        problems = list(self.mismatches)
        for name, q in self.expected.items():
            if q:
                head = ", ".join(_fmt(v) for v in list(q)[:4])
                problems.append(f"{self.name}: '{name}': {len(q)} expected value{'s' if len(q) > 1 else ''} "
                                f"never arrived (after {self.matches[name]} matches; next: {head}"
                                f"{', ...' if len(q) > 4 else ''})")
        if problems:
            raise ScoreboardMismatch("\n".join(problems))

    def report(self) -> str:
        return f"{self.name}: " + (", ".join(f"{k}: {v} matched" for k, v in sorted(self.matches.items()))
                                   or "nothing compared")
