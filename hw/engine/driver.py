"""Host driver: compiles a network for the engine and trains it through a transport.

:class:`EngineDriver` speaks :mod:`hw.engine.protocol` through any object with an async
``exchange(words) -> words`` method that sends one request packet (a list of 32-bit words, the last
one ending the packet) and returns the response packet. Transports: the Amaranth simulator
(:class:`AmaranthTransport`, small configurations), cocotb + Verilator (``sim/tb_engine.py``), and
later a serial port on a board, all behind the same driver API::

    driver = EngineDriver(compile_network(config), transport)
    await driver.load_program()        # checks IDENT first: the engine must be built from `config`
    await driver.load_weights(golden.model.init_weights(config.wage))
    await driver.load_batch(images, labels)
    cycles = await driver.run(step=0, steps=1, eta_log2=3)
    weights = await driver.read_weights()
"""

from __future__ import annotations

import random

import numpy as np

from golden.model import input_codes

from .compiler import Program
from .encoding import encode_program
from .protocol import COUNTERS, IDENT, Command, Status, Target, header, ident_values, item_bits, item_words

__all__ = ["EngineDriver", "EngineError", "EngineMismatch", "encode_items", "decode_items", "act_items", "act_fields"]

STATUS_TEXT = {s.value: s.name for s in Status}


class EngineError(RuntimeError):
    """The engine answered a request with an error status (named in the message)."""

    def __init__(self, request: str, status: int):
        self.status = status
        super().__init__(f"{request}: the engine answered {STATUS_TEXT.get(status, f'status {status}')}")


class EngineMismatch(RuntimeError):
    """The engine that answers was not built for this program (the message names the difference)."""


def encode_items(values, bits: int) -> list[int]:
    """Integers of ``bits`` bits (two's complement allowed) → 32-bit words, low word first per item."""
    words, mask = [], (1 << bits) - 1
    for v in values:
        v = int(v) & mask
        for _ in range(-(-bits // 32)):
            words.append(v & 0xFFFFFFFF)
            v >>= 32
    return words


def decode_items(words: list[int], bits: int) -> list[int]:
    n = -(-bits // 32)
    if len(words) % n:
        raise ValueError(f"{len(words)} words do not hold whole {bits}-bit items")
    out = []
    for i in range(0, len(words), n):
        v = 0
        for j, w in enumerate(words[i:i + n]):
            v |= (w & 0xFFFFFFFF) << (32 * j)
        out.append(v & ((1 << bits) - 1))
    return out


def lanes_to_int(lanes: np.ndarray, width: int) -> list[int]:
    """(n, L) signed lanes → one integer per row, lane 0 in the low bits."""
    lanes = np.asarray(lanes, dtype=np.int64) & ((1 << width) - 1)
    out = []
    for row in lanes:
        v = 0
        for i, x in enumerate(row):
            v |= int(x) << (i * width)
        out.append(v)
    return out


def int_to_lanes(values: list[int], width: int, lanes: int) -> np.ndarray:
    out = np.zeros((len(values), lanes), dtype=np.int64)
    for r, v in enumerate(values):
        for i in range(lanes):
            x = (v >> (i * width)) & ((1 << width) - 1)
            out[r, i] = x - (1 << width) if x >> (width - 1) else x
    return out


def act_items(data: np.ndarray, relu: np.ndarray | None = None, sat: np.ndarray | None = None,
              pool: np.ndarray | None = None) -> list[int]:
    """Activation words: (n, L) data lanes and optional mask bits and pool indices → item integers."""
    n, lanes = data.shape
    values = lanes_to_int(data, 8)
    for r in range(n):
        for i in range(lanes):
            if relu is not None and relu[r, i]:
                values[r] |= 1 << (8 * lanes + i)
            if sat is not None and sat[r, i]:
                values[r] |= 1 << (9 * lanes + i)
            if pool is not None:
                values[r] |= (int(pool[r, i]) & 3) << (10 * lanes + 2 * i)
    return values


def act_fields(values: list[int], lanes: int) -> dict[str, np.ndarray]:
    """Inverse of :func:`act_items`: ``data`` (n, L) int8 codes, the ``relu`` and ``sat`` mask bits
    and the 2-bit ``pool`` indices, each (n, L)."""
    L = lanes
    data = int_to_lanes([v & ((1 << (8 * L)) - 1) for v in values], 8, L)
    bits = np.array([[(v >> (8 * L + i)) & 1 for i in range(2 * L)] for v in values], dtype=bool).reshape(-1, 2 * L)
    pool = np.array([[(v >> (10 * L + 2 * i)) & 3 for i in range(L)] for v in values], dtype=np.int64).reshape(-1, L)
    return {"data": data, "relu": bits[:, :L], "sat": bits[:, L:], "pool": pool}


class EngineDriver:
    """Drives one engine running ``program`` through ``transport`` (see the module docstring)."""

    def __init__(self, program: Program, transport):
        self.program = program
        self.transport = transport
        self.lanes = program.config.lanes
        self.kG = program.config.wage.kG
        self._tag = 0

    async def request(self, command: Command, target: int = 0, args=(), payload=()) -> list[int]:
        self._tag = (self._tag + 1) & 0xFFFF
        words = [header(command, target, self._tag), *[int(a) & 0xFFFFFFFF for a in args], *payload]
        reply = await self.transport.exchange(words)
        if not reply:
            raise EngineError(Command(command).name, -1)
        status, tag = (reply[0] >> 8) & 0xFF, reply[0] >> 16
        if tag != self._tag or (reply[0] & 0xFF) != command:
            raise EngineError(f"{Command(command).name}: response {reply[0]:#010x} does not answer request tag "
                              f"{self._tag}", -1)
        if status != Status.OK:
            raise EngineError(Command(command).name, status)
        return reply[1:]

    async def write(self, target: Target, address: int, items: list[int]) -> None:
        bits = item_bits(target, self.lanes, self.kG)
        await self.request(Command.WRITE, target, (address, len(items)), encode_items(items, bits))

    async def read(self, target: Target, address: int, count: int) -> list[int]:
        bits = item_bits(target, self.lanes, self.kG)
        words = await self.request(Command.READ, target, (address, count))
        if len(words) != count * item_words(target, self.lanes, self.kG):
            raise EngineError(f"READ {Target(target).name}: {len(words)} words for {count} items", -1)
        return decode_items(words, bits)

    # ---- training-level operations -----------------------------------------------------------------
    async def identify(self) -> dict[str, int]:
        """The engine's ``IDENT`` words (:data:`hw.engine.protocol.IDENT`)."""
        reply = await self.request(Command.IDENT)
        if len(reply) != len(IDENT):
            raise EngineError(f"IDENT: {len(reply)} words, {len(IDENT)} expected", -1)
        return dict(zip(IDENT, reply))

    async def check_engine(self) -> None:
        """Raise :class:`EngineMismatch` unless the engine was built from this program's configuration."""
        got, want = await self.identify(), ident_values(self.program.config)
        if got["magic"] != want["magic"]:
            raise EngineMismatch(f"IDENT magic {got['magic']:#010x}: not a WAGE engine (expected {want['magic']:#010x})")
        diff = [f"{k} {got[k]} (the program needs {want[k]})" for k in IDENT if k != "fingerprint" and got[k] != want[k]]
        if diff:
            raise EngineMismatch("the engine was built for another configuration: " + ", ".join(diff))
        if got["fingerprint"] != want["fingerprint"]:
            raise EngineMismatch(
                f"the engine was built from another EngineConfig (fingerprint {got['fingerprint']:#010x}, the "
                f"program's {want['fingerprint']:#010x}): same sizes, so the WAGE config differs (network, "
                f"batch, bit widths or seed); rebuild the engine or compile for its configuration")

    async def load_program(self) -> None:
        """Check that the engine was built for the program (:meth:`check_engine`), then load it."""
        await self.check_engine()
        await self.write(Target.PROGRAM, 0, encode_program(self.program.instructions))

    async def load_weights(self, weights: list[np.ndarray]) -> None:
        for layout, ws in zip(self.program.weights, weights):
            await self.write(Target.WEIGHTS, layout.base, lanes_to_int(layout.pack(ws), self.kG))

    async def read_weights(self) -> list[np.ndarray]:
        out = []
        for layout in self.program.weights:
            values = await self.read(Target.WEIGHTS, layout.base, layout.words)
            out.append(layout.unpack(int_to_lanes(values, self.kG, self.lanes)))
        return out

    async def load_batch(self, images: np.ndarray, labels: np.ndarray) -> None:
        layout = self.program.inputs
        codes = input_codes(self.program.config.wage, images)
        await self.write(Target.ACT, layout.base, act_items(layout.pack(codes)))
        await self.write(Target.LABELS, 0, [int(y) for y in labels])

    async def run(self, step: int, steps: int = 1, eta_log2: int = 0) -> int:
        """Run ``steps`` training steps from global step ``step``; returns the cycles this RUN took."""
        reply = await self.request(Command.RUN, 0, (step, steps, eta_log2 & 0xFFFFFFFF))
        return reply[0]

    async def read_act(self, layout) -> np.ndarray:
        """The int8 codes of ``layout``'s activation words, (n, L)."""
        return (await self.read_act_fields(layout))["data"]

    def _check_readable(self, layout, target: Target) -> None:
        """Refuse a tensor that tile staging overwrites after its last read (``Program.overwritten``)."""
        if layout.name in self.program.overwritten:
            raise ValueError(f"{layout.name}: the step's tile staging overwrites its words after their last "
                             f"read (Program.overwritten), so they do not hold {layout.name} after a step; "
                             f"read(Target.{target.name}, {layout.base}, {layout.words}) gives the raw words")

    async def read_act_fields(self, layout) -> dict[str, np.ndarray]:
        """The whole activation words of ``layout`` (:func:`act_fields`); refused for a tensor that
        tile staging overwrites after its last read (``Program.overwritten``)."""
        self._check_readable(layout, Target.ACT)
        return act_fields(await self.read(Target.ACT, layout.base, layout.words), self.lanes)

    async def read_err(self, layout) -> np.ndarray:
        """The int8 codes of ``layout``'s error words, (n, L); refused for a tensor that tile
        staging overwrites after its last read (``Program.overwritten``)."""
        self._check_readable(layout, Target.ERR)
        values = await self.read(Target.ERR, layout.base, layout.words)
        return int_to_lanes(values, 8, self.lanes)

    async def counters(self) -> dict[str, int]:
        reply = await self.request(Command.COUNTERS)
        return dict(zip(COUNTERS, reply))


class AmaranthTransport:
    """Exchanges packets with an :class:`hw.engine.engine.Engine` inside an Amaranth testbench
    (``ctx`` of ``Simulator.add_testbench``); for small configurations only (≈ 2 k cycles/s).
    ``out_stall``: the probability that the host is not ready for a response word in a cycle
    (seeded by ``seed``), so that tests see the engine hold its responses."""

    def __init__(self, ctx, engine, timeout_cycles: int = 2_000_000, *, out_stall: float = 0.0, seed: int = 0):
        if not 0 <= out_stall < 1:
            raise ValueError(f"out_stall={out_stall!r}: must be at least 0 and below 1")
        self.ctx, self.engine, self.timeout = ctx, engine, timeout_cycles
        self.out_stall, self.rng = out_stall, random.Random(seed)
        self.cycles = 0

    async def exchange(self, words: list[int]) -> list[int]:
        ctx, hin, hout = self.ctx, self.engine.host_in, self.engine.host_out
        reply: list[int] = []
        i, n = 0, 0
        while True:
            ready = not self.out_stall or self.rng.random() >= self.out_stall
            ctx.set(hout.ready, ready)
            if i < len(words):
                ctx.set(hin.valid, 1)
                ctx.set(hin.payload, {"data": words[i], "last": int(i == len(words) - 1)})
            else:
                ctx.set(hin.valid, 0)
            taken_in = i < len(words) and ctx.get(hin.ready)
            out_valid = ctx.get(hout.valid)
            out = ctx.get(hout.payload)
            await ctx.tick()
            self.cycles += 1
            n += 1
            if taken_in:
                i += 1
            if out_valid and ready:
                reply.append(out.data)
                if out.last:
                    ctx.set(hin.valid, 0)
                    return reply
            if n > self.timeout:
                raise TimeoutError(f"no response within {self.timeout} cycles to a packet of {len(words)} words")
