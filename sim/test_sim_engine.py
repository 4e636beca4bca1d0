"""pytest entry points for the engine bench on Verilator (``sim/tb_engine.py``).

* ``test_trains_bit_exact[mlp]`` — the golden MLP (784-256-10, batch 16, 16×16 array) trained for 20
  steps on the embedded Fashion-MNIST subset through the host driver; every stored weight is
  compared with ``golden.model.train_step`` after every step.
* ``test_scoreboard_catches_one_flipped_bit[…]`` — one flipped bit in one read-back weight word makes
  the bench fail, naming the step, layer and word.
* ``test_trains_bit_exact[lenet_style]`` — a LeNet-style convolutional network with reduced channels
  (8C5-MP2-16C5-MP2-32FC-10 on 28×28 images, batch 8, 8×8 array: the first layer on the host-im2col'd
  input, a 5×5 valid convolution, 2×2 max-pool and unpool, fully connected layers after a pooled
  map) for 3 steps, weights compared every step;
  its mutation test flips one bit of a convolution weight word.
* ``test_trains_bit_exact[lenet_spill]`` — the same network with 4096-word scratchpads and a
  1024-word weight store: the input batch (18,432 words) and the fc1 weights (1,024) live in the
  external memory and E0 (4,608) straddles the boundary (3,024 words in the error scratchpad), the simulation model behind the engine's external-memory port
  (latency 24 cycles, a word every 2 cycles, 4 dead cycles per burst;
  :class:`hw.engine.system.EngineSystem`), a 512-row sum buffer and external sums: every
  store-then-quantise path in one program (sums on chip; conv2's error product in 9 row bands with
  its sums external; fc1's gradient computed twice); 3 steps, weights compared every step; its mutation
  test flips a bit of an external fc1 weight word.

The seed is printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``.
"""

from __future__ import annotations

import dataclasses

import pytest

from golden.config import WageConfig
from hw.engine.config import EngineConfig
from hw.engine.engine import Engine
from hw.engine.system import EngineSystem, ExternalTiming
from sim.runner import check_mutation_is_caught, run_cocotb

MLP = EngineConfig(WageConfig(net="mlp", batch_size=16, seed=1), lanes=16, data_words=2048, weight_words=16384,
                   label_words=16)

LENET = EngineConfig(WageConfig(net="8C5-MP2-16C5-MP2-32FC-10", input_shape=(1, 28, 28), batch_size=8, seed=1), lanes=8, data_words=20480,
                     weight_words=2048, label_words=8)


def _params(config: EngineConfig, **kw) -> dict:
    engine = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    engine["wage"] = config.wage.to_json(indent=None)
    return {"engine": engine, **kw}


#: With 4,096-word scratchpads the input batch spills to the external memory, E0 straddles the
#: scratchpad boundary and fc1's weights the weight store's (552 of their 1,024 words on chip);
#: a 512-row sum buffer (115 kbit) and 4,096 external sum words: the small products store their
#: sums on chip, conv2's error product (1,152 rows, in 9 row bands with 8,192 program words) in
#: the external memory, and fc1's gradient computes twice.
LENET_SPILL = LENET.replace(data_words=4096, external_words=32768, weight_words=1024, external_weight_words=1024,
                            sum_words=512, external_sum_words=4096, program_words=8192)
SLOW_MEMORY = ExternalTiming(latency=24, cycles_per_word=2, command_cycles=4)

#: name → (config, build name, steps, the [step, layer, word, bit] the mutation test flips)
TRAINED = {"mlp": (MLP, "engine_mlp16", 20, [0, 1, 37, 5]),
           "lenet_style": (LENET, "engine_lenet8", 3, [0, 1, 17, 3]),
           "lenet_spill": (LENET_SPILL, "engine_lenet8_spill_sums", 3, [0, 2, 100, 2])}


def _top(config: EngineConfig):
    """The engine, with the external-memory model behind its port when it has one."""
    return EngineSystem(config, SLOW_MEMORY) if config.external_words else Engine(config)


@pytest.mark.parametrize("net", TRAINED)
def test_trains_bit_exact(net):
    config, name, steps, _ = TRAINED[net]
    r = run_cocotb(_top(config), name=name, test_module="sim.tb_engine", testcase="train_steps",
                   parameters=_params(config, steps=steps, eta_log2=3, stall=0.1, backpressure=0.1), timeout_s=3600)
    assert r.passed == r.tests == 1


@pytest.mark.parametrize("net", TRAINED)
def test_scoreboard_catches_one_flipped_bit(net):
    config, name, _, mutate = TRAINED[net]
    check_mutation_is_caught(_top(config), name=name, test_module="sim.tb_engine", testcase="train_steps",
                             parameters=_params(config, steps=1, eta_log2=3, mutate=mutate))
