"""boards.train: the step loop against the simulated gateware, and the command line's errors.

The loop (:func:`boards.train.train_and_check`) runs against the engine behind the gateware
:class:`boards.link.ReliableLink`, with the host's :class:`boards.link_host.LinkEndpoint` on the
link's byte ports (one byte per clock each way, clocked by the simulation's cycle count): the
board's stack without the UART (``tests/test_boards_hostlink.py`` covers the UART pins; at 8 clocks
per bit the 1,470-word program alone would take 470,000 clocks, several minutes in the simulator).
The network is the small one of ``tests/test_hw_engine.py`` (8FC-4 on 4×4 images, batch 6).
"""

import re
import sys
from collections import deque
from dataclasses import asdict

import numpy as np
import pytest
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.hdl import Module
from amaranth.sim import Simulator

from boards import train
from boards.link import ReliableLink
from boards.link_host import LinkEndpoint
from golden import model as golden
from golden.config import WageConfig
from hw.engine.compiler import compile_network
from hw.engine.config import EngineConfig
from hw.engine.driver import act_fields, decode_items, encode_items, int_to_lanes, lanes_to_int
from hw.engine.engine import Engine
from hw.engine.model import EngineModel
from hw.engine.protocol import IDENT, Command, Status, Target, header, ident_values, item_bits, item_words
from tests.support import seed_for
from tests.test_boards_link import fake_serial_modules
from tests.test_hw_engine import CONFIG

TIMEOUT = 20_000                     # clocks; no byte is lost here, so it never fires


class LinkedEngine(wiring.Component):
    """The engine behind the gateware link, with the link's byte ports outside."""

    def __init__(self, config):
        self.link = ReliableLink(timeout_cycles=TIMEOUT)
        self.engine = Engine(config)
        super().__init__({"rx_bytes": In(stream.Signature(8)), "tx_bytes": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.link, m.submodules.engine = link, engine = self.link, self.engine
        wiring.connect(m, wiring.flipped(self.rx_bytes), link.rx_bytes)
        wiring.connect(m, link.tx_bytes, wiring.flipped(self.tx_bytes))
        wiring.connect(m, link.to_engine, engine.host_in)
        wiring.connect(m, engine.host_out, link.from_engine)
        return m


class LinkBytesTransport:
    """``async exchange(words)`` through a :class:`LinkEndpoint` and the link's byte ports inside an
    Amaranth testbench; ``stats`` like :class:`boards.link_host.SerialTransport`'s."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut, self.cycle = ctx, dut, 0
        self.endpoint = LinkEndpoint(timeout=TIMEOUT, clock=lambda: self.cycle)
        self.to_board = deque()
        self.seconds = 0.0
        self._last = {}

    def _put(self, sig, value):
        if self._last.get(id(sig)) != value:
            self._last[id(sig)] = value
            self.ctx.set(sig, value)

    async def _run_until(self, done):
        rx, tx, ep = self.dut.rx_bytes, self.dut.tx_bytes, self.endpoint
        self._put(tx.ready, 1)
        while not done():
            self.to_board.extend(ep.poll())
            b = self.to_board.popleft() if self.to_board else None
            self._put(rx.valid, b is not None)
            if b is not None:
                self._put(rx.payload, b)
            _, _, tv, tb = await self.ctx.tick().sample(tx.valid, tx.payload)
            self.cycle += 1
            assert self.cycle < 2_000_000, "no answer from the simulated board"
            if tv:
                ep.feed(bytes([tb]))

    async def connect(self):
        self.endpoint.connect()
        await self._run_until(lambda: not self.endpoint.connecting)

    async def exchange(self, words):
        import time
        t0 = time.monotonic()
        self.endpoint.send(words)
        await self._run_until(lambda: bool(self.endpoint.packets))
        self.seconds += time.monotonic() - t0
        return self.endpoint.packets.popleft()

    @property
    def stats(self):
        return {**asdict(self.endpoint.stats), "seconds": self.seconds}


#: READ WEIGHTS responses before step 0's: the loop reads the loaded weights back, one layer per READ.
LOAD_READS = len(CONFIG.wage.layers)


class CorruptWeightRead:
    """Flips ``bit`` of word ``word`` of the ``nth`` READ WEIGHTS response (0-based, counted over the
    run: the first :data:`LOAD_READS` check the loaded weights; then the driver reads one layer per
    READ, so the nth of a step's reads is layer nth)."""

    def __init__(self, transport, nth, word, bit):
        self.transport, self.nth, self.word, self.bit = transport, nth, word, bit
        self.reads = 0
        self.flipped = None

    async def exchange(self, words):
        reply = await self.transport.exchange(words)
        if (words[0] & 0xFF, (words[0] >> 8) & 0xFF) == (Command.READ, Target.WEIGHTS):
            if self.reads == self.nth:
                reply = list(reply)
                reply[1 + self.word] ^= 1 << self.bit            # reply[0] is the header
                self.flipped = (words[1], self.word, self.bit)
            self.reads += 1
        return reply

    @property
    def stats(self):
        return self.transport.stats


def batches(steps):
    rng = np.random.default_rng(seed_for("board-train-data"))
    b = CONFIG.wage.batch_size
    images = rng.integers(0, 256, size=(steps * b, *CONFIG.wage.input_shape), dtype=np.uint8)
    labels = rng.integers(0, CONFIG.wage.classes, size=steps * b)
    return images, labels


def run_loop(steps, wrap=lambda t: t):
    program = compile_network(CONFIG)
    images, labels = batches(steps)
    dut = LinkedEngine(CONFIG)
    out = {"reports": []}

    async def bench(ctx):
        transport = LinkBytesTransport(ctx, dut)
        await transport.connect()
        t = wrap(transport)
        out["results"] = await train.train_and_check(t, program, images, labels, steps,
                                                     report=out["reports"].append)
        out["transport"], out["stats"] = t, transport.stats
        out["link_counters"] = {name: ctx.get(getattr(dut.link, name)) for name in ReliableLink.COUNTERS}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, program, images, labels


def test_two_steps_agree_with_golden_through_the_link():
    out, program, images, labels = run_loop(2)
    results = out["results"]
    for r in results:
        print(r.line())
    assert [r.step for r in results] == [0, 1] and out["reports"] == results
    assert all(r.ok for r in results)
    # The words counted are the step's requests and responses: batch + labels + RUN + one READ per layer.
    b, L, kG = CONFIG.wage.batch_size, CONFIG.lanes, CONFIG.wage.kG
    reads = sum(3 + 1 + w.words * item_words(Target.WEIGHTS, L, kG) for w in program.weights)
    writes = ((3 + program.inputs.words * item_words(Target.ACT, L, kG) + 1)      # request, OK response
              + (3 + b * item_words(Target.LABELS, L, kG) + 1) + (4 + 2))        # labels; RUN and its cycles
    assert results[0].words == results[1].words == reads + writes
    link = results[0].link
    assert link["payload_bytes_tx"] + link["payload_bytes_rx"] == 4 * results[0].words
    assert link["retransmissions"] == link["crc_errors"] == 0 and link["throughput_bytes_per_s"] > 0
    assert out["link_counters"]["crc_errors"] == out["link_counters"]["retransmissions"] == 0
    assert results[1].line().endswith("  OK") and " B/s, 0 retransmitted" in results[1].line()
    # the loop's reference is golden's: the weights it compares with change in both steps
    w0 = golden.init_weights(CONFIG.wage)
    w1, _ = golden.train_step(CONFIG.wage, w0, images[:6], labels[:6], 0, 3)
    assert any(not np.array_equal(a, c) for a, c in zip(w0, w1))


def test_one_corrupted_weight_word_is_a_divergence_naming_layer_and_index():
    """Bit 0 of word 1 of layer 1's read-back in step 0: one weight of layer 1 differs, the loop
    reports it (layer, index, got, want) and stops."""
    out, program, images, labels = run_loop(2, wrap=lambda t: CorruptWeightRead(t, nth=LOAD_READS + 1, word=1, bit=0))
    results = out["results"]
    assert len(results) == 1 and not results[0].ok
    d = results[0].divergence
    want, _ = golden.train_step(CONFIG.wage, golden.init_weights(CONFIG.wage), images[:6], labels[:6], 0, 3)
    assert d.layer == 1 and d.differing == 1 and d.size == want[1].size
    assert d.want == want[1][d.index] and abs(d.got - d.want) == 1        # the lowest bit of lane 0 of word 1
    layout = program.weights[1]
    marker = np.zeros((layout.words, CONFIG.lanes), dtype=np.int64)
    marker[1, 0] = 1
    assert [tuple(i) for i in np.argwhere(layout.unpack(marker) != 0)] == [d.index]
    assert f"layer 1 weight {list(d.index)}: got {d.got}, want {d.want}" in results[0].line()
    assert out["transport"].flipped is not None


def test_weights_that_read_back_wrong_after_loading_stop_before_any_step():
    """Layer 1's read-back right after loading has a flipped bit: LoadMismatch names the weight,
    and no step runs (the RUN command is never sent)."""
    sent = []

    class Recording(CorruptWeightRead):
        async def exchange(self, words):
            sent.append(words[0] & 0xFF)
            return await super().exchange(words)

    with pytest.raises(train.LoadMismatch, match=r"the weights read back right after loading differ from those "
                       r"written, before any step: layer 1 weight \[.*\]: got .*, want .* \(1 of the layer's "
                       r"\d+ weights differ\); the engine keeps every weight on chip") as info:
        run_loop(1, wrap=lambda t: Recording(t, nth=1, word=0, bit=3))
    assert info.value.divergence.layer == 1 and not info.value.external_weights
    assert Command.RUN not in sent and sent.count(Command.READ) == LOAD_READS


def test_first_divergence():
    a = [np.zeros((2, 3), dtype=np.int64), np.arange(6).reshape(3, 2)]
    assert train.first_divergence(a, [x.copy() for x in a]) is None
    b = [x.copy() for x in a]
    b[1][2, 0] = 7
    b[1][2, 1] = 9
    d = train.first_divergence(b, a)
    assert (d.layer, d.index, d.got, d.want, d.differing, d.size) == (1, (2, 0), 7, 4, 2, 6)
    assert str(d) == "layer 1 weight [2, 0]: got 7, want 4 (2 of the layer's 6 weights differ)"
    with pytest.raises(ValueError, match=r"1 layers read back, 2 expected"):
        train.first_divergence(a[:1], a)


# ------------------------------------------------------------------------------------ command line

@pytest.mark.parametrize("argv, message", [
    (["--steps", "1"], r"the following arguments are required: --port"),
    (["--port", "/dev/null", "--steps", "0"], r"--steps 0: must be at least 1"),
    (["--port", "/dev/null", "--steps", "x"], r"argument --steps: invalid int value: 'x'"),
    (["--port", "/dev/null", "--steps", "400"], r"--steps 400: 400 batches of 16 need 6400 images, the embedded "
                                                r"data set has 6000 \(at most 375 steps\)"),
    (["--port", "/dev/null", "--steps", "1", "--variant", "99F"], r"variant='99F': board 'ulx3s' comes as"),
    (["--port", "/dev/null", "--steps", "1", "--board", "de10"], r"board='de10': unknown; supported: ulx3s, ecpix5"),
    (["--port", "/dev/null", "--steps", "1", "--net", "lenet5"],
     r"--net lenet5: the engine configuration \(the ulx3s 85F default\) trains 'mlp'"),
    (["--port", "/dev/null", "--steps", "1", "--variant", "45F", "--config", "x.json"],
     r"argument --config: not allowed with argument --variant"),
    (["--port", "/dev/null", "--steps", "1", "--config", "/nonexistent/engine.json"],
     r"cannot read engine configuration file /nonexistent/engine.json"),
    (["--port", "/dev/null", "--steps", "1", "--baud", "0"], r"--baud 0: must be a positive integer"),
    (["--port", "/dev/null", "--steps", "1", "--memory", "ddr3"], r"argument --memory: invalid choice: 'ddr3'"),
    (["--port", "/dev/null", "--steps", "1", "--memory", "sdram", "--board", "ecpix5"],
     r"memory='sdram': board 'ecpix5' has no SDR SDRAM"),
    (["--port", "/dev/null", "--steps", "1", "--memory", "sdram", "--variant", "45F"],
     r"memory='sdram': the ulx3s 45F has no SDRAM engine; parts with one: 85F"),
    (["--port", "/dev/null", "--steps", "1", "--memory", "sdram", "--config", "x.json"],
     r"--memory sdram and --config x.json: give one"),
    (["--port", "/dev/null", "--steps", "1", "--memory", "sdram", "--net", "lenet5"],
     r"--net lenet5: the engine configuration \(the ulx3s 85F default SDRAM engine\) trains 'mlp'"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_a_missing_port_is_named_with_the_ports_that_exist(monkeypatch, capsys):
    for name, module in fake_serial_modules([("/dev/ttyUSB3", "FT231X USB UART"), ("/dev/ttyS0", "n/a")]).items():
        monkeypatch.setitem(sys.modules, name, module)
    assert train.main(["--port", "/dev/ttyNOPE", "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert "error: serial port '/dev/ttyNOPE' does not exist; serial ports found: /dev/ttyS0, /dev/ttyUSB3 " \
           "(FT231X USB UART)" in captured.err
    assert "Traceback" not in captured.err
    assert "fingerprint" in captured.out                      # the configuration was resolved first


def test_config_file_and_seed(tmp_path):
    """--config takes an EngineConfig JSON as hw.build does (target set to ecp5); --seed replaces the
    WAGE seed, which changes the fingerprint the IDENT check compares."""
    path = tmp_path / "engine.json"
    CONFIG.save(path)
    config = train.board_config(config_path=path)
    assert config == CONFIG.replace(target="ecp5")
    seeded = train.board_config(config_path=path, seed=9)
    assert seeded.wage.seed == 9 and seeded.fingerprint() != config.fingerprint()
    assert train.board_config(variant="85F").wage.net == "mlp"


def test_memory_picks_the_default_engine_the_bitstream_was_built_from(tmp_path):
    from boards.catalog import SDRAM_ENGINES, VARIANT_ENGINES, BoardError
    from hw.engine.config import EngineConfigError
    assert train.board_config() == train.board_config(memory="bram") == VARIANT_ENGINES["85F"]
    assert train.board_config(variant="85F", memory="sdram") == SDRAM_ENGINES["85F"]
    seeded = train.board_config(memory="sdram", seed=4)
    assert seeded == SDRAM_ENGINES["85F"].replace(wage=SDRAM_ENGINES["85F"].wage.replace(seed=4))
    with pytest.raises(BoardError, match=r"memory='flash': must be one of bram, sdram"):
        train.board_config(memory="flash")
    CONFIG.save(tmp_path / "engine.json")
    with pytest.raises(EngineConfigError, match=r"memory='sdram' and config .*engine.json: give one"):
        train.board_config(config_path=tmp_path / "engine.json", memory="sdram")


# ------------------------------------------------------------------------------------ the whole command

SMALL_MLP = EngineConfig(WageConfig(net="16FC-10", input_shape=(1, 28, 28), batch_size=4, seed=2), lanes=4,
                         data_words=1024, weight_words=4096, label_words=4)


class ModelBoard:
    """A stand-in for :class:`boards.link_host.SerialTransport`: answers the engine's packets with the
    word-level model (:class:`hw.engine.model.EngineModel`, bit-exact with golden) behind a
    packet-level reading of :mod:`hw.engine.protocol`. ``ident_config``: the build it claims to be;
    ``flip``: (READ WEIGHTS number, word, bit) to corrupt."""

    def __init__(self, config, ident_config=None, flip=None):
        self.config, self.model = config, EngineModel(compile_network(config))
        self.ident = ident_values(ident_config or config)
        self.flip, self.weight_reads = flip, 0
        self.stats = {k: 0 for k in ("payload_bytes_tx", "payload_bytes_rx", "retransmissions", "crc_errors",
                                     "timeouts")}
        self.stats.update(seconds=0.0, throughput_bytes_per_s=0.0)

    async def exchange(self, words):
        cmd, target, tag = words[0] & 0xFF, (words[0] >> 8) & 0xFF, words[0] >> 16
        L, kG, m = self.config.lanes, self.config.wage.kG, self.model
        reply = [header(cmd, Status.OK, tag)]
        if cmd == Command.IDENT:
            reply += [self.ident[k] for k in IDENT]
        elif cmd == Command.WRITE and target != Target.PROGRAM:
            addr, n = words[1], words[2]
            items = decode_items(words[3:], item_bits(target, L, kG))
            assert len(items) == n
            if target == Target.WEIGHTS:
                m.wmem[addr:addr + n] = int_to_lanes(items, kG, L)
            elif target == Target.ACT:
                m.act[addr:addr + n] = act_fields(items, L)["data"]
            elif target == Target.LABELS:
                m.labels[addr:addr + n] = items
        elif cmd == Command.RUN:
            m.run_step(words[1], words[3])
            reply.append(1234)
        elif cmd == Command.READ and target == Target.WEIGHTS:
            addr, n = words[1], words[2]
            data = encode_items(lanes_to_int(m.wmem[addr:addr + n], kG), item_bits(target, L, kG))
            if self.flip and self.flip[0] == self.weight_reads:
                data[self.flip[1]] ^= 1 << self.flip[2]
            self.weight_reads += 1
            reply += data
        self.stats["payload_bytes_tx"] += 4 * len(words)
        self.stats["payload_bytes_rx"] += 4 * len(reply)
        self.stats["seconds"] += 0.001
        return reply

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def run_main(monkeypatch, tmp_path, capsys, board, steps=2):
    import boards.link_host
    path = tmp_path / "engine.json"
    SMALL_MLP.save(path)
    monkeypatch.setattr(boards.link_host, "SerialTransport", lambda port, baud: board)
    code = train.main(["--port", "/dev/ttyFAKE", "--steps", str(steps), "--config", str(path), "--net", "16FC-10"])
    return code, capsys.readouterr()


def test_the_command_trains_and_reports_every_step(monkeypatch, tmp_path, capsys):
    code, out = run_main(monkeypatch, tmp_path, capsys, ModelBoard(SMALL_MLP.replace(target="ecp5")))
    print(out.out)
    assert code == 0, out.err
    lines = out.out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 2 and all(line.endswith("  OK") for line in steps)
    assert " words " in steps[0] and "B/s, 0 retransmitted, 0 CRC errors" in steps[0]
    assert "2 steps: every weight equal to golden after every step" in out.out


def test_the_command_exits_1_on_a_divergence(monkeypatch, tmp_path, capsys):
    code, out = run_main(monkeypatch, tmp_path, capsys, ModelBoard(SMALL_MLP.replace(target="ecp5"), flip=(4, 5, 1)))
    assert code == 1
    steps = [line for line in out.out.splitlines() if line.startswith("step ") and "diverged from" not in line]
    assert len(steps) == 2 and steps[0].endswith("  OK")   # reads 0, 1: the load check; 2, 3: step 0; 4: step 1, layer 0
    assert "DIVERGED: layer 0 weight [" in steps[1]
    assert "\nstep 1 diverged from golden: layer 0 weight [" in out.out


def test_the_command_drives_the_sdram_engine_with_memory_sdram(monkeypatch, capsys):
    """--memory sdram: the ULX3S 85F SDRAM engine (its IDENT, its program) without a --config; a board
    running the on-chip build is refused."""
    import boards.link_host
    from boards.catalog import SDRAM_ENGINES, VARIANT_ENGINES
    sdram = SDRAM_ENGINES["85F"]
    monkeypatch.setattr(boards.link_host, "SerialTransport", lambda port, baud: ModelBoard(sdram))
    code = train.main(["--port", "/dev/ttyFAKE", "--steps", "1", "--memory", "sdram"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"fingerprint {sdram.fingerprint():#010x}" in out.out and "4096 + 32768 external words" in out.out
    assert "1 steps: every weight equal to golden after every step" in out.out
    monkeypatch.setattr(boards.link_host, "SerialTransport",
                        lambda port, baud: ModelBoard(sdram, ident_config=VARIANT_ENGINES["85F"]))
    code = train.main(["--port", "/dev/ttyFAKE", "--steps", "1", "--memory", "sdram"])
    assert code == 3 and "does not run this build" in capsys.readouterr().err


def test_the_command_exits_3_when_the_loaded_weights_read_back_wrong(monkeypatch, tmp_path, capsys):
    """A flipped bit in the load check's read-back: exit 3 before any step, with the cause to look at:
    the on-chip engine's bitstream, the SDRAM engine's read capture (--sdram-read-delay)."""
    import boards.link_host
    from boards.catalog import SDRAM_ENGINES
    code, out = run_main(monkeypatch, tmp_path, capsys, ModelBoard(SMALL_MLP.replace(target="ecp5"), flip=(1, 2, 0)))
    assert code == 3 and not [line for line in out.out.splitlines() if line.startswith("step ")]
    assert re.search(r"error: /dev/ttyFAKE: the weights read back right after loading differ from those written, "
                     r"before any step: layer 1 weight \[.*\]: .*; the engine keeps every weight on chip", out.err)
    assert "Traceback" not in out.err
    monkeypatch.setattr(boards.link_host, "SerialTransport", lambda port, baud: ModelBoard(SDRAM_ENGINES["85F"], flip=(0, 7, 2)))
    code = train.main(["--port", "/dev/ttyFAKE", "--steps", "1", "--memory", "sdram"])
    err = capsys.readouterr().err
    assert code == 3 and "layer 0 weight [" in err
    assert "the engine keeps weights in the SDRAM, so the likeliest cause is the SDRAM read capture" in err
    assert "--sdram-read-delay 1, or 3 (default 2)" in err


def test_the_command_exits_3_when_the_board_runs_another_build(monkeypatch, tmp_path, capsys):
    other = SMALL_MLP.replace(target="ecp5", wage=SMALL_MLP.wage.replace(seed=3))
    code, out = run_main(monkeypatch, tmp_path, capsys, ModelBoard(SMALL_MLP.replace(target="ecp5"), ident_config=other))
    assert code == 3, out.err
    assert "error: the board on /dev/ttyFAKE does not run this build: the engine was built from another " \
           "EngineConfig (fingerprint" in out.err
    assert "Traceback" not in out.err
