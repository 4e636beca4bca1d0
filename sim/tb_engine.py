"""cocotb bench for the training engine on Verilator (pytest entry points: ``sim/test_sim_engine.py``).

The host driver (:class:`hw.engine.driver.EngineDriver`) runs unchanged over
:class:`CocotbTransport`: packets go in and out through the engine's 32-bit host streams (with
:class:`sim.streams.StreamSource`/``StreamSink``, which check the stream rules). The bench trains
the network of the ``config`` parameter on the embedded Fashion-MNIST subset, one RUN per step,
and after every step reads back every stored weight and compares it, word by word, with
:func:`golden.model.train_step` in a :class:`sim.streams.Scoreboard`.

Parameters (``sim_params()``): ``engine`` (EngineConfig fields, ``wage`` as WageConfig JSON),
``steps``, ``eta_log2``, ``stall``/``backpressure`` (host-stream randomness), ``mutate`` =
[step, layer, word, bit] flips one bit of one read-back weight word (the scoreboard must fail);
for ``throughput``, ``out`` (the JSON report's path) and ``per_instruction`` (default true: also
run each instruction alone).
"""

from __future__ import annotations

import random

import cocotb
import numpy as np

from golden import model as golden
from golden.config import WageConfig
from golden.data import load_dataset
from hw.engine.compiler import compile_network
from hw.engine.config import EngineConfig
from hw.engine.driver import EngineDriver, lanes_to_int
from sim.streams import Scoreboard, ScoreboardMismatch, StreamSink, StreamSource, sim_params, wait_reset


class CocotbTransport:
    """One request packet in, one response packet out, through the engine's host streams."""

    def __init__(self, dut, rng: random.Random, stall: float = 0.0, backpressure: float = 0.0):
        self.src = StreamSource(dut.clk, dut.host_in__valid, dut.host_in__ready, dut.host_in__payload,
                                rng=rng, stall_probability=stall, name="host_in")
        self.sink = StreamSink(dut.clk, dut.host_out__valid, dut.host_out__ready, dut.host_out__payload,
                               rng=rng, backpressure_probability=backpressure, name="host_out")

    async def exchange(self, words: list[int]) -> list[int]:
        n = len(words)
        self.src.send([(w & 0xFFFFFFFF) | (int(i == n - 1) << 32) for i, w in enumerate(words)])
        reply = []
        while True:
            beat = await self.sink.recv()
            reply.append(beat & 0xFFFFFFFF)
            if beat >> 32 & 1:
                return reply


def engine_config(p: dict) -> EngineConfig:
    e = dict(p["engine"])
    e["wage"] = WageConfig.from_json(e["wage"])
    return EngineConfig(**e)


async def _train(dut, p: dict) -> Scoreboard:
    seed = cocotb.RANDOM_SEED
    rng = random.Random(seed)
    config = engine_config(p)
    wage = config.wage
    program = compile_network(config)
    await wait_reset(dut)
    driver = EngineDriver(program, CocotbTransport(dut, rng, p.get("stall", 0.0), p.get("backpressure", 0.0)))
    sb = Scoreboard("weights", log=dut._log)
    data = load_dataset("embedded")
    weights = golden.init_weights(wage)
    await driver.load_program()
    await driver.load_weights(weights)
    b, eta = wage.batch_size, p.get("eta_log2", 3)
    mutate = p.get("mutate")
    for step in range(p["steps"]):
        x, y = data.train_images[step * b:(step + 1) * b], data.train_labels[step * b:(step + 1) * b]
        weights, stats = golden.train_step(wage, weights, x, y, step, eta)
        await driver.load_batch(x, y)
        cycles = await driver.run(step, 1, eta)
        got = await driver.read_weights()
        for layer, (layout, want, have) in enumerate(zip(program.weights, weights, got)):
            want_words = lanes_to_int(layout.pack(want), wage.kG)
            have_words = lanes_to_int(layout.pack(have), wage.kG)
            if mutate is not None and mutate[:2] == [step, layer]:
                have_words[mutate[2]] ^= 1 << mutate[3]
            sb.expect_many(f"step {step} W{layer}", want_words)
            for v in have_words:
                sb.compare(f"step {step} W{layer}", v)
        counters = await driver.counters()
        dut._log.info(f"step {step}: loss {stats.loss:.3f}, errors {stats.errors}/{b}, RUN {cycles} cycles, "
                      f"weights match ({sb.total_matches} words so far); counters {counters}")
    sb.check_empty()
    return sb


@cocotb.test()
async def train_steps(dut):
    """Train ``steps`` steps; every weight word equals the golden model's after every step."""
    sb = await _train(dut, sim_params())
    dut._log.info(f"{sb.total_matches} weight words matched")
    if hasattr(dut, "ext_fault"):
        assert int(dut.ext_fault.value) == 0, ("the external memory flagged a fault (model: an address "
                                               "beyond its words; SDRAM: a timing violation)")


@cocotb.test()
async def mutation_detected(dut):
    """With ``mutate`` set, the scoreboard names exactly the flipped step, layer, word and bit."""
    p = sim_params()
    step, layer, word, bit = p["mutate"]
    try:
        await _train(dut, p)
    except ScoreboardMismatch as e:
        text = str(e)
        assert f"'step {step} W{layer}' beat {word}:" in text and f"(bit {bit})" in text, text
        return
    raise AssertionError("the flipped bit was not reported")


@cocotb.test()
async def throughput(dut):
    """One training step on a full batch; writes the engine's counters to ``p["out"]`` (JSON), and
    behind the SDRAM its command counts (:func:`sdram_counts`), for the step and each instruction."""
    import json
    p = sim_params()
    config = engine_config(p)
    wage = config.wage
    program = compile_network(config)
    await wait_reset(dut)
    driver = EngineDriver(program, CocotbTransport(dut, random.Random(cocotb.RANDOM_SEED)))
    data = load_dataset("embedded")
    await driver.load_program()
    await driver.load_weights(golden.init_weights(wage))
    b = wage.batch_size
    await driver.load_batch(data.train_images[:b], data.train_labels[:b])
    eta = p.get("eta_log2", 3)
    before, sdram_before = await driver.counters(), sdram_counts(dut)
    cycles = await driver.run(0, 1, eta)
    after, sdram = await driver.counters(), counts_since(sdram_before, sdram_counts(dut))
    delta = {k: after[k] - before[k] for k in after}
    dut._log.info(f"one step: {delta}")
    # the step's figures only count if the step was right: weights equal golden's, and an external
    # memory (model or SDRAM behind the port) flagged nothing
    init = golden.init_weights(wage)
    want = golden.train_step(wage, init, data.train_images[:b], data.train_labels[:b], 0, eta)[0]
    got = await driver.read_weights()
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if not np.array_equal(g, w)]
    assert not bad, f"weights of layers {bad} differ from golden after the step"
    if hasattr(dut, "ext_fault"):
        assert int(dut.ext_fault.value) == 0, "the external memory flagged a fault (SDRAM: a timing violation)"
    # each instruction alone (a program of it and END): its cycles, for the per-layer figures (the
    # engine's timing does not depend on the data, so the step's state is good enough)
    from hw.engine.encoding import encode_program
    from hw.engine.isa import Instruction, Op
    from hw.engine.protocol import Target
    alone = []
    end = Instruction(Op.END)
    empty = await _run_program(driver, [end], eta)
    for unit in _units(program.instructions[:-1]) if p.get("per_instruction", True) else []:
        sdram_before = sdram_counts(dut)
        c = await _run_program(driver, unit + [end], eta)
        name = str(unit[-1]) if len(unit) == 1 else f"{unit[-1]} ({len(unit) - 1} parts)"
        alone.append({"instruction": name, "cycles": c - empty, "sdram": counts_since(sdram_before, sdram_counts(dut))})
        dut._log.info(f"{name}: {c - empty} cycles; SDRAM commands {alone[-1]['sdram']}")
    await driver.write(Target.PROGRAM, 0, encode_program(program.instructions))
    with open(p["out"], "w") as f:
        json.dump({"run_reply_cycles": cycles, "counters": delta, "sdram": sdram, "end_only_cycles": empty,
                   "instructions": alone}, f)


def sdram_counts(dut) -> dict | None:
    """The SDRAM command counters of :class:`boards.sdram_system.EngineSDRAMSystem` (None for
    another top)."""
    from boards.sdram_system import SDRAM_COUNTS
    if not hasattr(dut, "sdram_reads"):
        return None
    return {name: int(getattr(dut, f"sdram_{name}").value) for name in SDRAM_COUNTS}


def counts_since(before: dict | None, after: dict | None) -> dict | None:
    """``after − before`` per counter (32-bit, wrapping)."""
    if before is None:
        return None
    return {k: (after[k] - before[k]) % (1 << 32) for k in after}


def _units(instructions) -> list[list]:
    """The instructions one by one, except that a product in parts (conv.PART_FIRST … PART_FINISH)
    is one unit with the COPY records that stage its operands (before and between its parts):
    its records only run together; and a forward product in staged batch bands (COPY_ACT, CONV_FWD,
    COPY_ACT, …, and a fully connected product's last band that reads its input where it lives) is
    one unit, so that each unit is one whole product."""
    from hw.engine.conv import PART_FINISH, PART_WHOLE
    from hw.engine.isa import Op
    units, open_ = [], []
    for ins in instructions:
        part = getattr(ins, "part", PART_WHOLE)
        banded = not open_ and units and units[-1][0].op == Op.COPY_ACT and units[-1][-1].layer == ins.layer
        if banded and (ins.op == Op.COPY_ACT or ins.op == units[-1][-1].op):
            open_ = units.pop()                  # the next band of the same forward product
        open_.append(ins)
        if part == PART_FINISH or (part == PART_WHOLE and ins.op not in Op.COPIES):
            units.append(open_)
            open_ = []
    return units + ([open_] if open_ else [])


async def _run_program(driver, instructions, eta: int) -> int:
    from hw.engine.encoding import encode_program
    from hw.engine.protocol import Target
    await driver.write(Target.PROGRAM, 0, encode_program(instructions))
    return await driver.run(0, 1, eta)
