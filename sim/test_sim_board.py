"""pytest entry points for the board bench on Verilator (``sim/tb_board.py``).

The design is the board's core — serial link (UART + reliable link layer), engine, SDRAM controller —
with the SDRAM chip model on its pins (:class:`boards.board_system.BoardSDRAMSystem`) and the host's
UART around it (:class:`sim.board_harness.UARTPeerHarness`), at 3 Mbaud. The engine is a small one
(:data:`CONFIG`: 4 lanes, a 784-16-10 MLP at batch 8 whose input batch and first-layer weights
live in the SDRAM) at 25 MHz (the ULX3S oscillator), 8.3 clocks per bit: Verilator runs the ULX3S SDRAM build's 8-lane engine
at about 10,000 cycles/s, 75 bytes/s of serial line at 40 MHz, so its 420 kB MLP step would take
hours. Every part is the board's generator at another size; ``target="ecp5"`` instantiates the
MULT18X18D and DP16KD primitives, simulated with the models of ``sim/ecp5_models.py``.

* ``test_link_storm_then_training_bit_exact`` — random commands under heavy line faults (bursts of
  drops, bit flips, duplicates and delays both ways, and glitches on both wires) until at least
  1,000 faults were injected, every answer checked against a reference memory; then two MLP
  training steps through the link under light faults, every weight equal to golden after each step;
  no SDRAM timing violation, no link protocol error.
* ``test_a_flipped_bit_in_read_answers_is_caught`` — one bit of every READ answer flipped after the
  first 20 commands (no line faults): the storm's reference memory must report it.
* ``test_a_flipped_weight_bit_is_a_divergence`` — one bit of one read-back weight word flipped (no
  storm): the step is reported as diverged at exactly that layer and weight.

The link's retransmission timeouts are shorter than on the board (no USB latency to cover): the
board's two full frame times and slack, the host's its window of four frames and two more. The seed is printed by the runner; rerun with
``COCOTB_RANDOM_SEED=<seed>``.
"""

from __future__ import annotations

import dataclasses

from boards.board_system import BoardSDRAMSystem
from golden.config import WageConfig
from hw.engine.config import EngineConfig
from boards.link import MAX_FRAME_WORDS, frame_bytes
from boards.link_host import default_timeout_s
from sim.board_harness import UARTPeerHarness
from sim.ecp5_models import ecp5_model_files
from sim.runner import run_cocotb

CONFIG = EngineConfig(WageConfig(net="16FC-10", input_shape=(1, 28, 28), batch_size=8, seed=1), lanes=4,
                      data_words=256, weight_words=64, label_words=8, external_words=2048,
                      external_weight_words=4096, target="ecp5")
CLK_FREQ = 25e6
BAUD = 3_000_000
BIT_CYCLES = CLK_FREQ / BAUD
PERIOD_NS = 1e9 / CLK_FREQ
#: the board's: a full frame and its acknowledgement, twice, and slack (the host's: its window)
TIMEOUT_CYCLES = int((2 * frame_bytes(MAX_FRAME_WORDS) + 64) * 10 * BIT_CYCLES)

STORM = {"rate": 0.004, "burst": 8, "max_delay_cycles": 3000, "glitch_bytes": 2000}
TRAIN = {"rate": 0.0002, "burst": 4, "max_delay_cycles": 3000, "glitch_bytes": 20_000}


def board_bench(config: EngineConfig, clk_freq: float, baud: int, timeout_cycles: int | None, **params):
    """The bench's design (:class:`~sim.board_harness.UARTPeerHarness` around
    :class:`~boards.board_system.BoardSDRAMSystem`; ``timeout_cycles`` None: the board's own link
    timeout) and its ``sim.tb_board`` parameters; the host's timeouts follow the board's."""
    board = BoardSDRAMSystem(config, clk_freq=clk_freq, baud=baud, activity_cycles=1024,
                             link_timeout_cycles=timeout_cycles)
    # The host hands its whole window (4 frames) to the line at once, and a retransmission queues
    # behind what is still waiting there: its timeout must cover the window (boards.link_host's
    # default, without the USB turnaround). With the board's two frames the host timed out again
    # before its retransmitted frames reached the line, and the queue of stale copies only grew.
    host_timeout = int(default_timeout_s(baud, turnaround_s=0) * clk_freq) + 1
    timeout = max(host_timeout, board.core.link.timeout_cycles)
    engine = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    engine["wage"] = config.wage.to_json(indent=None)
    return UARTPeerHarness(board, clk_freq=clk_freq, baud=baud), {
        "engine": engine, "period_ns": 1e9 / clk_freq, "bit_cycles": clk_freq / baud,
        "host_timeout_cycles": host_timeout, "exchange_cycles": 50 * timeout, **params}


def _run(testcase: str, timeout_s: float, **params):
    top, parameters = board_bench(CONFIG, CLK_FREQ, BAUD, TIMEOUT_CYCLES, **params)
    r = run_cocotb(top, name="board_sdram", test_module="sim.tb_board", testcase=testcase,
                   clock_period_ns=PERIOD_NS, cxx_opt="-O2", build_args=ecp5_model_files(), timeout_s=timeout_s,
                   parameters=parameters)
    assert r.passed == r.tests == 1


def test_link_storm_then_training_bit_exact():
    _run("link_storm", 5400, commands=300, min_faults=1000, storm=STORM, train=TRAIN, steps=2)


def flipped_weight(layer: int, word: int, bit: int = 3) -> str:
    """Which weight bit ``bit`` of word ``word`` of ``layer``'s read-back holds, as the divergence names it."""
    import numpy as np

    from golden.model import init_weights
    from hw.engine.compiler import compile_network
    from hw.engine.driver import decode_items, encode_items, int_to_lanes, lanes_to_int
    layout, kG, lanes = compile_network(CONFIG).weights[layer], CONFIG.wage.kG, CONFIG.lanes
    w = init_weights(CONFIG.wage)[layer]
    words = encode_items(lanes_to_int(layout.pack(w), kG), kG * lanes)
    words[word] ^= 1 << bit
    (index,) = np.argwhere(layout.unpack(int_to_lanes(decode_items(words, kG * lanes), kG, lanes)) != w)
    return f"layer {layer} weight {[int(i) for i in index]}"


def test_a_flipped_bit_in_read_answers_is_caught():
    _run("read_mutation_detected", 3600, commands=200, min_faults=0, steps=1, mutate_reads_after=20)


def test_a_flipped_weight_bit_is_a_divergence():
    layer, word = 0, 1001                    # fc1, in the SDRAM
    _run("weight_mutation_detected", 3600, commands=0, min_faults=0, steps=1, mutate=[layer, word],
         expect=flipped_weight(layer, word))
