"""cocotb bench for hw/weight_update.py on Verilator (pytest entry points: ``sim/test_sim_weight_update.py``).

Every ``serve`` and ``readback`` beat is compared, in order, as the packed payload integer (lanes,
``last``) by a :class:`sim.streams.Scoreboard`. Expected beats come from a reference memory kept
with ``golden.quant.update_weights`` (updates, and loads as a clip) and served codes from
``golden.quant.forward_weights``. All four input streams and both outputs get seeded random stalls
and the sinks check the stream rules. Randomness derives from ``cocotb.RANDOM_SEED`` (printed by
the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``).

Ordering rule used (module docstring of hw/weight_update.py): a read command queued after every
write before it has been taken sees those writes; no write is queued while reads are outstanding.

Tests (parameters from ``sim_params()``, the DUT's widths included):

* ``golden_trace`` — both layers of the golden MLP trace (batch 16, embedded Fashion-MNIST, 2 steps)
  in one memory (layer l at word ``bases[l]``): load ``init/l/Ws``, serve and compare with
  ``s0/l/Wq``; for each step apply ``s{s}/l/dW``, read back ``s{s}/l/W_after``, serve and compare
  with ``s{s+1}/l/Wq`` (after the last step: ``forward_weights(W_after)``).
* ``random_updates`` — ``updates`` random update beats in bursts (addresses with back-to-back repeats
  and near neighbours; ΔWs zero, ±dw_max, the port extremes, uniform), each burst followed by random
  serve/readback ranges (wrapping), periodically a full readback + serve; saturation is reached on
  both sides and counted.
* ``mutation_detected`` — ``mutate`` = [stream, n, bit] flips one bit of the n-th beat received on
  ``stream`` before it is compared: the scoreboard must report exactly that beat and bit and refuse
  to pass. The same parameter makes ``random_updates`` fail.
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from sim.streams import (Scoreboard, ScoreboardMismatch, StreamSink, StreamSource, pack_lanes, read_int,
                         sim_params, wait_reset)


class Bench:
    """Sources, sinks, scoreboard and golden reference memory around one WeightUpdate."""

    def __init__(self, dut, p: dict, seed: int, name: str, fail_fast: bool = True):
        from golden.quant import forward_weights, update_weights
        self._fw, self._uw = forward_weights, update_weights
        self.dut, self.p = dut, p
        self.depth, self.lanes = p["depth"], p["lanes"]
        self.aw, self.dww, self.ww, self.wqw = p["addr_width"], p["dw_width"], p["w_width"], p["wq_width"]
        self.kW, self.kG, self.w_clip = p["kW"], p["kG"], p["w_clip"]
        self.ref = np.zeros((self.depth, self.lanes), dtype=np.int64)
        self.sb = Scoreboard(name, log=dut._log, fail_fast=fail_fast)
        self.expected = {"serve": 0, "readback": 0}
        self.received = {"serve": 0, "readback": 0}
        mutate = p.get("mutate")
        stall, bp = p.get("stall", 0.0), p.get("backpressure", 0.0)
        self.src = {}
        for k, nm in enumerate(("update", "load", "serve_cmd", "readback_cmd")):
            self.src[nm] = StreamSource(dut.clk, getattr(dut, f"{nm}__valid"), getattr(dut, f"{nm}__ready"),
                                        getattr(dut, f"{nm}__payload"), rng=random.Random(seed + 1 + k),
                                        stall_probability=stall, name=nm)
        self.sink = {}
        for k, nm in enumerate(("serve", "readback")):
            def check(value: int, nm=nm) -> None:
                if mutate is not None and mutate[0] == nm and self.received[nm] == mutate[1]:
                    value ^= 1 << mutate[2]
                self.received[nm] += 1
                self.sb.compare(nm, value)
            self.sink[nm] = StreamSink(dut.clk, getattr(dut, f"{nm}__valid"), getattr(dut, f"{nm}__ready"),
                                       getattr(dut, f"{nm}__payload"), rng=random.Random(seed + 11 + k),
                                       backpressure_probability=bp, callback=check, name=nm)

    # ---- writes ----------------------------------------------------------------------------
    def load(self, base: int, words) -> None:
        words = np.asarray(words, dtype=np.int64).reshape(-1, self.lanes)
        self.src["load"].send((base + a) | pack_lanes(w, self.ww, signed=True) << self.aw
                              for a, w in enumerate(words))
        self.ref[base:base + len(words)] = self._uw(words, 0, self.w_clip)

    def update(self, addrs, dws) -> None:
        dws = np.asarray(dws, dtype=np.int64).reshape(-1, self.lanes)
        self.src["update"].send(int(a) | pack_lanes(d, self.dww, signed=True) << self.aw
                                for a, d in zip(addrs, dws))
        for a, d in zip(addrs, dws):
            self.ref[a] = self._uw(self.ref[a], d, self.w_clip)

    async def drain_writes(self) -> None:
        await self.src["update"].wait_idle()
        await self.src["load"].wait_idle()

    # ---- reads -----------------------------------------------------------------------------
    def read(self, kind: str, start: int, count: int) -> None:
        """Queue a serve/readback command of ``count`` words from ``start`` and expect its beats."""
        addrs = [(start + i) % self.depth for i in range(count)]
        words = self.ref[addrs]
        if kind == "serve":
            words, width = self._fw(words, self.kW, self.kG), self.wqw
        else:
            width = self.ww
        shift = self.lanes * width
        self.sb.expect_many(kind, (pack_lanes(w, width, signed=True) | int(i == count - 1) << shift
                                   for i, w in enumerate(words)))
        self.expected[kind] += count
        self.src[f"{kind}_cmd"].send(start | count << self.aw)

    async def wait_reads(self) -> None:
        for kind in ("serve", "readback"):
            await self.sink[kind].wait_count(self.expected[kind])

    async def finish(self) -> None:
        await self.drain_writes()
        await self.wait_reads()
        for _ in range(10):                           # nothing extra may follow
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            assert not read_int(self.dut.serve__valid), "serve: more beats than expected"
            assert not read_int(self.dut.readback__valid), "readback: more beats than expected"
        self.sb.check_empty()
        self.dut._log.info("%s", self.sb.report())


def _dw_values(p: dict, rng: np.random.Generator, n: int) -> np.ndarray:
    lanes, m, w = p["lanes"], p["dw_max"], p["dw_width"]
    pool = np.array([0, 0, 0, m, -m, -(1 << (w - 1)), (1 << (w - 1)) - 1, 1, -1], dtype=np.int64)
    special = pool[rng.integers(0, len(pool), (n, lanes))]
    small = rng.integers(-m, m + 1, (n, lanes))
    mix = np.where(rng.random((n, lanes)) < 0.3, special, small)
    # some bursts push one way only, so words pile up against ±w_clip
    if rng.random() < 0.3:
        mix = np.minimum(np.abs(mix), (1 << (w - 1)) - 1) * (1 if rng.random() < 0.5 else -1)
    return mix


def _addresses(depth: int, rng: np.random.Generator, n: int) -> list[int]:
    addrs: list[int] = []
    while len(addrs) < n:
        r = rng.random()
        if addrs and r < 0.25:
            addrs.append(addrs[-1])
        elif len(addrs) >= 2 and r < 0.45:
            addrs.append(addrs[-int(rng.integers(2, min(6, len(addrs) + 1)))])
        elif addrs and r < 0.55:
            addrs.append((addrs[-1] + 1) % depth)
        else:
            addrs.append(int(rng.integers(0, depth)))
    return addrs


async def _random_updates(b: Bench, p: dict, rng: np.random.Generator) -> dict:
    depth, lanes, c = b.depth, b.lanes, b.w_clip
    init = rng.integers(-c, c + 1, (depth, lanes))
    special = rng.random((depth, lanes)) < 0.2
    init[special] = rng.choice([c, -c, 32, -32, 0], size=int(special.sum()))
    b.load(0, init)
    await b.drain_writes()
    b.read("readback", 0, depth)
    await b.wait_reads()
    done = bursts = sat_hi = sat_lo = 0
    total = p["updates"]
    while done < total:
        n = min(total - done, int(rng.integers(1, p.get("burst", 400) + 1)))
        b.update(_addresses(depth, rng, n), _dw_values(p, rng, n))
        done, bursts = done + n, bursts + 1
        sat_hi += int((b.ref == c).sum())
        sat_lo += int((b.ref == -c).sum())
        await b.drain_writes()
        for _ in range(int(rng.integers(0, 3))):
            kind = "serve" if rng.random() < 0.5 else "readback"
            b.read(kind, int(rng.integers(0, depth)), int(rng.integers(1, depth + 1)))
        if bursts % 8 == 0:
            b.read("readback", 0, depth)
            b.read("serve", 0, depth)
        await b.wait_reads()
    b.read("readback", 0, depth)
    b.read("serve", 0, depth)
    await b.finish()
    return {"updates": done, "bursts": bursts, "words at +w_clip (summed per burst)": sat_hi,
            "words at -w_clip (summed per burst)": sat_lo}


@cocotb.test()
async def random_updates(dut):
    p = sim_params()
    seed = cocotb.RANDOM_SEED
    b = Bench(dut, p, seed, "random_updates")
    await wait_reset(dut)
    stats = await _random_updates(b, p, np.random.default_rng(seed))
    assert stats["words at +w_clip (summed per burst)"] > 0 and stats["words at -w_clip (summed per burst)"] > 0
    dut._log.info("random_updates: %s, COCOTB_RANDOM_SEED=%s", stats, os.environ.get("COCOTB_RANDOM_SEED"))


@cocotb.test()
async def mutation_detected(dut):
    """One bit of one received beat is flipped (``mutate`` = [stream, n, bit]): exactly that beat must
    be reported, naming the bit, and the scoreboard must refuse to pass."""
    p = sim_params()
    stream, n, bit = p["mutate"]
    seed = cocotb.RANDOM_SEED
    b = Bench(dut, p, seed, "mutation", fail_fast=False)
    await wait_reset(dut)
    rng = np.random.default_rng(seed)
    c = b.w_clip
    b.load(0, rng.integers(-c, c + 1, (b.depth, b.lanes)))
    await b.drain_writes()
    b.update(_addresses(b.depth, rng, 200), _dw_values(p, rng, 200))
    await b.drain_writes()
    for _ in range(n // b.depth + 1):
        b.read(stream, 0, b.depth)
    await b.wait_reads()
    assert len(b.sb.mismatches) == 1, b.sb.mismatches
    msg = b.sb.mismatches[0]
    assert f"'{stream}' beat {n}:" in msg and f"(bit {bit})" in msg, msg
    try:
        b.sb.check_empty()
    except ScoreboardMismatch as e:
        dut._log.info("scoreboard failed as it must: %s", e)
    else:
        raise AssertionError("the scoreboard passed a flipped bit")


def golden_mlp_trace():
    """Golden MLP trace at batch 16 on the embedded data set (2 steps), cached."""
    from golden.config import WageConfig
    from golden.trace import embedded_trace
    cfg = WageConfig(net="mlp", batch_size=16)
    return cfg, embedded_trace(cfg, 2)


@cocotb.test()
async def golden_trace(dut):
    p = sim_params()
    seed = cocotb.RANDOM_SEED
    cfg, trace = golden_mlp_trace()
    b = Bench(dut, p, seed, "golden_trace")
    await wait_reset(dut)
    lanes, bases = b.lanes, p["bases"]
    steps = 2
    layers = range(len(cfg.layers))
    words = {l: trace[f"init/l{l}/Ws"].size // lanes for l in layers}
    for l in layers:
        assert bases[l] + words[l] <= b.depth and trace[f"init/l{l}/Ws"].size % lanes == 0
        b.load(bases[l], trace[f"init/l{l}/Ws"])
    await b.drain_writes()
    for l in layers:
        # the reference memory must agree with the trace itself, not only with the DUT
        np.testing.assert_array_equal(b._fw(b.ref[bases[l]:bases[l] + words[l]], b.kW, b.kG).reshape(-1),
                                      trace[f"s0/l{l}/Wq"].reshape(-1))
        b.read("serve", bases[l], words[l])
    await b.wait_reads()
    for s in range(steps):
        for l in layers:
            np.testing.assert_array_equal(b.ref[bases[l]:bases[l] + words[l]].reshape(-1),
                                          trace[f"s{s}/l{l}/W_before"].reshape(-1))
            b.update(range(bases[l], bases[l] + words[l]), trace[f"s{s}/l{l}/dW"])
        await b.drain_writes()
        for l in layers:
            np.testing.assert_array_equal(b.ref[bases[l]:bases[l] + words[l]].reshape(-1),
                                          trace[f"s{s}/l{l}/W_after"].reshape(-1))
            if s + 1 < steps:
                np.testing.assert_array_equal(
                    b._fw(b.ref[bases[l]:bases[l] + words[l]], b.kW, b.kG).reshape(-1),
                    trace[f"s{s + 1}/l{l}/Wq"].reshape(-1))
            b.read("readback", bases[l], words[l])
            b.read("serve", bases[l], words[l])
        await b.wait_reads()
        dut._log.info("golden_trace: step %d, layers %s bit-exact (%s words)", s, list(layers),
                      [words[l] for l in layers])
    await b.finish()
