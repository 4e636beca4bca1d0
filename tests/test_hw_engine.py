"""The engine RTL in Amaranth's simulator: a small network's step against the word-level model, and
the host protocol's error handling."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden import model as golden
from golden.config import WageConfig
from hw.engine.compiler import array_beats, compile_network, two_pass_products
from hw.engine.isa import Op
from hw.engine.config import EngineConfig
from hw.engine.driver import AmaranthTransport, EngineDriver, EngineError
from hw.engine.engine import Engine
from hw.engine.model import EngineModel
from hw.engine.protocol import Command, Status, Target, header
from hw.engine.system import EngineSystem, ExternalTiming
from tests.support import add_domain_clocks, seed_for

WAGE = WageConfig(net="8FC-4", input_shape=(1, 4, 4), batch_size=6, seed=5)
CONFIG = EngineConfig(WAGE, lanes=4, data_words=64, weight_words=64, label_words=8)


def simulate(bench, config=CONFIG, timing=None):
    """Run ``bench(ctx, dut)`` against the engine (with the external-memory model behind its port
    when the config has one; ``timing`` may instead be a factory of the system, ``timing(config)``)."""
    if callable(timing):
        dut = timing(config)
    else:
        dut = EngineSystem(config, timing or ExternalTiming()) if config.external_words else Engine(config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    add_domain_clocks(sim, dut, 1e-8)        # a system with more clocks: theirs in proportion
    async def testbench(ctx):
        await bench(ctx, dut)
    sim.add_testbench(testbench)
    sim.run()


async def train_on_engine(driver: EngineDriver, weights, batches, after_step) -> None:
    """Load the program and ``weights``, then one RUN per (images, labels) batch, step s = its index,
    log2 η = 3; ``await after_step(s, cycles)`` after each."""
    await driver.load_program()
    await driver.load_weights(weights)
    for s, (x, y) in enumerate(batches):
        await driver.load_batch(x, y)
        await after_step(s, await driver.run(s, 1, 3))


def mismatches(got: dict, want: dict) -> list[str]:
    return [name for name in want if not np.array_equal(got[name], want[name])]


@pytest.fixture(scope="module")
def one_step():
    """One training step of a 16-8-4 MLP (batch 6: not a multiple of the 4 lanes) on the RTL and the model."""
    rng = np.random.default_rng(seed_for("engine-step"))
    images = rng.integers(0, 256, size=(6, 1, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 4, size=6)
    program = compile_network(CONFIG)
    weights = golden.init_weights(WAGE)
    model = EngineModel(program)
    model.load_weights(weights)
    model.load_batch(images, labels)
    model.run_step(0, 3)
    got = {}

    async def bench(ctx, dut):
        driver = EngineDriver(program, AmaranthTransport(ctx, dut))
        await driver.load_program()
        await driver.load_weights(weights)
        got["weights_loaded"] = await driver.read_weights()
        await driver.load_batch(images, labels)
        got["cycles"] = await driver.run(0, 1, 3)
        for a in program.activations:
            got[a.name] = await driver.read_act(a)
        for e in program.errors:
            got[e.name] = await driver.read_err(e)
        got["counters"] = await driver.counters()

    simulate(bench)
    want = {a.name: model.act[a.base:a.end] for a in program.activations}
    want.update({e.name: model.err[e.base:e.end] for e in program.errors})
    return got, want, weights


def test_weights_load_and_read_back(one_step):
    got, _, weights = one_step
    for a, b in zip(got["weights_loaded"], weights):
        np.testing.assert_array_equal(a, b)


def test_forward_loss_and_error_match_the_model_word_for_word(one_step):
    got, want, _ = one_step
    assert mismatches(got, want) == []
    assert got["counters"]["steps"] == 1 and got["counters"]["run_cycles"] == got["cycles"] > 0
    # the step's array beats, as the compiler predicts them (what hw.build's sweep multiplies out)
    assert got["counters"]["array_beats"] == array_beats(compile_network(CONFIG)) > 0


def test_one_wrong_bit_is_caught(one_step):
    got, want, _ = one_step
    bad = dict(want)
    name = next(iter(want))
    bad[name] = want[name].copy()
    bad[name][1, 2] ^= 1
    assert mismatches(got, bad) == [name]


def test_protocol_errors_leave_the_engine_ready():
    program = compile_network(CONFIG)
    results = []

    async def bench(ctx, dut):
        t = AmaranthTransport(ctx, dut, timeout_cycles=2000)
        driver = EngineDriver(program, t)

        async def raw(words):
            reply = await t.exchange(words)
            results.append((reply[0] >> 8) & 0xFF)
            return reply

        await raw([header(9, 0)])                                     # unknown command, one word
        await raw([header(0, 0), 1, 2, 3])                            # unknown command, longer packet
        await raw([header(Command.READ, 7), 0, 1])                    # unknown target
        await raw([header(Command.READ, Target.ACT), 60, 5])          # beyond data_words = 64
        await raw([header(Command.WRITE, Target.ACT), 0, 2, 1, 2, 3])  # 2 items of 2 words: truncated
        await raw([header(Command.WRITE, Target.LABELS), 0, 1, 3, 4])  # one label and a word too many
        await raw([header(Command.READ, Target.ACT)])                  # arguments missing
        await raw([header(Command.COUNTERS, 0), 5])                    # COUNTERS takes no arguments
        # still serving: a write and a read back
        await driver.write(Target.LABELS, 2, [3, 1])
        results.append(await driver.read(Target.LABELS, 2, 2))
        try:
            await driver.read(Target.WEIGHTS, 63, 2)
        except EngineError as e:
            results.append(str(e))

    simulate(bench)
    assert results[:8] == [Status.BAD_COMMAND, Status.BAD_COMMAND, Status.BAD_TARGET, Status.OUT_OF_RANGE,
                           Status.TRUNCATED, Status.TOO_LONG, Status.TRUNCATED, Status.TOO_LONG]
    assert results[8] == [3, 1]
    assert results[9] == "READ: the engine answered OUT_OF_RANGE"


def test_program_reads_back_as_written():
    """The host's program reads answer from the fetch register a cycle after the RAM: every word
    comes back, in order, for reads of one word and of many, with the host stalling, and after a
    RUN used the same register."""
    program = compile_network(CONFIG)
    rng = np.random.default_rng(seed_for("engine-program-read"))
    words = [int(w) for w in rng.integers(0, 1 << 32, size=48, dtype=np.uint64)]
    results = {}

    async def bench(ctx, dut):
        # (the host stalls half of the response cycles: a word waits in the register until taken)
        t = AmaranthTransport(ctx, dut, timeout_cycles=4000, out_stall=0.5, seed=seed_for("engine-program-stall"))
        driver = EngineDriver(program, t)
        await driver.write(Target.PROGRAM, 5, words)
        results["all"] = await driver.read(Target.PROGRAM, 5, len(words))
        results["one"] = [await driver.read(Target.PROGRAM, 5 + k, 1) for k in (0, 17, 47)]
        await driver.load_program()
        await driver.run(1)
        results["after_run"] = await driver.read(Target.PROGRAM, 0, 4)

    simulate(bench)
    assert results["all"] == words
    assert results["all"][:-1] + [results["all"][-1] ^ 1] != words      # a flipped bit would show
    assert results["one"] == [[words[0]], [words[17]], [words[47]]]
    from hw.engine.encoding import encode_program
    assert results["after_run"] == encode_program(program.instructions)[:4]


def test_ident_names_the_build_and_a_foreign_program_is_refused():
    from hw.engine.driver import EngineMismatch
    from hw.engine.protocol import MAGIC, ident_values
    program = compile_network(CONFIG)
    seeded = compile_network(CONFIG.replace(wage=WAGE.replace(seed=6)))           # same sizes, other seed
    wider = compile_network(CONFIG.replace(data_words=128))
    results = {}

    async def bench(ctx, dut):
        t = AmaranthTransport(ctx, dut, timeout_cycles=2000)
        results["ident"] = await EngineDriver(program, t).identify()
        await EngineDriver(program, t).check_engine()
        for name, other in (("seed", seeded), ("data_words", wider)):
            try:
                await EngineDriver(other, t).load_program()
            except EngineMismatch as e:
                results[name] = str(e)
        results["after"] = await EngineDriver(program, t).counters()               # still serving

    simulate(bench)
    assert results["ident"] == ident_values(CONFIG) and results["ident"]["magic"] == MAGIC
    assert "another EngineConfig" in results["seed"] and "seed" in results["seed"]
    assert results["data_words"] == ("the engine was built for another configuration: data_words 64 "
                                     "(the program needs 128)")
    assert results["after"]["steps"] == 0


def test_bad_programs_answer_bad_instruction_and_leave_the_engine_ready():
    """Malformed programs answer BAD_INSTRUCTION and leave the engine ready (the real program runs
    before and after each): a first record that does not carry every word (here: none, after a
    run left END in the instruction register), a record with an unknown operation, a program that
    runs off the end of the program memory (no END: a whole NOP record, then empty masks, NOP
    repeated), mask bits past the record, and a record whose words run past the memory's end (its
    one word would be read at address 512, that is 0 of this 512-word memory: the mask's
    0xFFFFFFFF, END)."""
    BAD_INSTRUCTION = Status.BAD_INSTRUCTION
    from hw.engine.encoding import MACHINE_WORDS, MASK_WORDS, ProgramImageError, decode_program, encode_records
    config = CONFIG.replace(wage=WAGE.replace(net="4"), program_words=512)                # FWD LOSS GRAD END
    program = compile_network(config)
    nop = encode_records([0])                                         # a whole record of op NOP (0)
    empty = [0] * MASK_WORDS                                          # a record that carries no word
    past = nop[:MASK_WORDS - 1] + [nop[MASK_WORDS - 1] | 1 << (MACHINE_WORDS % 32)] + nop[MASK_WORDS:]
    pad = (config.program_words - len(nop) - MASK_WORDS) // MASK_WORDS
    cut = nop + empty * pad + [0] * (config.program_words - len(nop) - (pad + 1) * MASK_WORDS)
    cut += [1] + [0] * (MASK_WORDS - 1)                               # … ends the memory: it carries word 0
    assert len(cut) == config.program_words
    no_end = nop + [0] * (config.program_words - len(nop))
    images = [empty, encode_records([0x7]), no_end, past, cut]        # op 7: not an operation
    decode_program(images[1]), decode_program(no_end)                 # the host-side decoder agrees
    for image in (empty, past, cut):
        with pytest.raises(ProgramImageError):
            decode_program(image)
    results = []

    async def bench(ctx, dut):
        driver = EngineDriver(program, AmaranthTransport(ctx, dut, timeout_cycles=200000))
        for image in images:
            await driver.load_program()
            results.append(await driver.run(0, 1, 3) > 0)
            await driver.write(Target.PROGRAM, 0, image)
            try:
                await driver.run(0, 1, 3)
                results.append("ran")
            except EngineError as e:
                results.append(e.status)
        results.append((await driver.counters())["steps"])
        await driver.load_program()
        results.append(await driver.run(0, 1, 3) > 0)

    simulate(bench, config)
    assert results == [True, BAD_INSTRUCTION] * len(images) + [len(images), True]


def test_conv_instruction_on_an_engine_built_without_convolution_is_refused():
    """An MLP engine has no convolution address generators (EngineConfig.has_conv): a conv record
    written past the driver's fingerprint check answers BAD_INSTRUCTION; the MLP program then runs."""
    BAD_INSTRUCTION = Status.BAD_INSTRUCTION
    from hw.engine.encoding import MACHINE_WORDS, MASK_WORDS, encode_program
    assert not CONFIG.has_conv and CONV_CONFIG.has_conv
    conv_record = encode_program(compile_network(CONV_CONFIG).instructions[:1])
    assert len(conv_record) == MASK_WORDS + MACHINE_WORDS
    assert run_foreign_records(compile_network(CONFIG), conv_record) == [BAD_INSTRUCTION, True]


def test_conv_pattern_deeper_than_its_walk_is_refused():
    """Each slot's convolution walk has only the odometer digits its network's patterns use
    (EngineConfig.slot_digits): a record whose pattern moves one more digit answers BAD_INSTRUCTION,
    the same record as compiled runs, and the engine's own program runs after."""
    from hw.engine.conv import MAX_DIGITS
    from hw.engine.conv_addrgen import conv_pattern_layout
    from hw.engine.encoding import encode_instruction, encode_records, machine_layout
    from hw.engine.isa import COUNT_BITS, Instruction
    from hw.engine.slot import slot_layout
    program = compile_network(CONV_CONFIG)
    first = program.instructions[0]
    built = CONV_CONFIG.slot_digits["a"][0]
    assert first.a.__class__.__name__ == "ConvPattern" and len(first.a.pos_radix) <= built < MAX_DIGITS
    radix_at = (machine_layout()["a"].offset + slot_layout()["p"].offset
                + conv_pattern_layout()["pos_radix"].offset + built * COUNT_BITS)
    record, end = encode_instruction(first), encode_instruction(Instruction(Op.END))
    deeper = record | (2 << radix_at)                               # digit `built` gets radix 2

    def words(*records):
        return encode_records(records)
    assert run_foreign_records(program, words(deeper, end), words(record, end)) == \
        [Status.BAD_INSTRUCTION, "ran", True]


def run_foreign_records(program, *word_lists, weights=None, batch=None, timing=None) -> list:
    """Write each of ``word_lists`` (records the driver would refuse) past its fingerprint check and
    RUN it: [the error status, or "ran"] per list, then whether ``program`` (this build's) runs
    after, then (with ``weights`` loaded first, and ``batch``) the weights after that run."""
    results = []

    async def bench(ctx, dut):
        driver = EngineDriver(program, AmaranthTransport(ctx, dut, timeout_cycles=200000))
        if weights is not None:
            await driver.load_program()
            await driver.load_weights(weights)
            await driver.load_batch(*batch)
        for words in word_lists:
            await driver.write(Target.PROGRAM, 0, words)
            try:
                await driver.run(0, 1, 3)
                results.append("ran")
            except EngineError as e:
                results.append(e.status)
        await driver.load_program()
        results.append(await driver.run(0, 1, 3) > 0)
        if weights is not None:
            results.append(await driver.read_weights())

    simulate(bench, program.config, timing)
    return results


def test_bad_config_is_named():
    with pytest.raises(TypeError, match="config="):
        Engine("mlp")


def test_weights_after_the_step_match_the_model_and_golden():
    """The gradient path (Q_G with indexed draws, weight updates) over two steps."""
    rng = np.random.default_rng(seed_for("engine-grad"))
    program = compile_network(CONFIG)
    weights = golden.init_weights(WAGE)
    batches = [(rng.integers(0, 256, size=(6, 1, 4, 4), dtype=np.uint8), rng.integers(0, 4, size=6))
               for _ in range(2)]
    want = [weights]
    for s, (x, y) in enumerate(batches):
        want.append(golden.train_step(WAGE, want[-1], x, y, s, 3)[0])
    got = []

    async def bench(ctx, dut):
        driver = EngineDriver(program, AmaranthTransport(ctx, dut))
        total = [0]

        async def after_step(s, cycles):
            now = (await driver.counters())["run_cycles"]
            assert cycles == now - total[0] > 0                                       # this RUN's cycles
            total[0] = now
            got.append(await driver.read_weights())

        await train_on_engine(driver, weights, batches, after_step)

    simulate(bench)
    for s in range(2):
        for layer, (a, b) in enumerate(zip(got[s], want[s + 1])):
            np.testing.assert_array_equal(a, b, err_msg=f"step {s} layer {layer}")
        assert any(not np.array_equal(a, b) for a, b in zip(want[s + 1], want[s]))     # the step changed weights


# ---- convolution -----------------------------------------------------------------------------------

CONV_WAGE = WageConfig(net="4C3p-MP2-8C3-10", input_shape=(1, 6, 6), batch_size=3, seed=7)
CONV_CONFIG = EngineConfig(CONV_WAGE, lanes=4, data_words=512, weight_words=128, label_words=4)


@pytest.fixture(scope="module")
def conv_steps():
    """Two training steps of a small convolutional network (same conv + pool, valid conv, fc; batch 3)
    on the RTL, and the word-level conv model after each."""
    return run_conv_steps(CONV_CONFIG)


#: The same network with 64-word scratchpads and a 40-word weight store: the input batch (324 words)
#: lives in the external memory, E0 (108) straddles the scratchpad boundary (its first 49 words in
#: the error scratchpad, the rest external: hw.engine.compiler.choose_placement) and W1 (72) the
#: weight store's (its first 8 words on chip, after W0 and W2), behind a slow model
#: (latency 7, a word every 2 cycles, 3 dead cycles per burst).
CONV_SPILL_CONFIG = CONV_CONFIG.replace(data_words=64, external_words=1024, weight_words=40,
                                        external_weight_words=256)
SPILL_TIMING = ExternalTiming(latency=7, cycles_per_word=2, command_cycles=3)


@pytest.fixture(scope="module")
def conv_spill_steps():
    return run_conv_steps(CONV_SPILL_CONFIG, SPILL_TIMING)


def run_conv_steps(config, timing=None, placement=None, refused=None, edit=None):
    """Two training steps on the RTL and the word-level model: (program, got, want), a snapshot of
    every tensor and the counters after each step. ``refused(program)``: lists of records to write
    and RUN first (with the weights and first batch loaded), each answering an error status, which
    ``got`` then holds under "refused" (the steps after them must still be exact). ``edit(program)``:
    the program both run instead of the compiler's (a variant no compiler emits)."""
    from hw.engine.conv import ConvEngineModel
    from hw.engine.encoding import encode_program
    rng = np.random.default_rng(seed_for("engine-conv"))
    wage, b = config.wage, config.batch
    batches = [(rng.integers(0, 256, size=(b, *wage.input_shape), dtype=np.uint8), rng.integers(0, 10, size=b))
               for _ in range(2)]
    program = compile_network(config, placement)
    if edit is not None:
        program = edit(program)
    weights = golden.init_weights(wage)
    model = ConvEngineModel(program)
    model.load_weights(weights)
    want, got = [], []
    for s, (x, y) in enumerate(batches):
        model.load_batch(x, y)
        model.run_step(s, 3)
        snap = {"weights": model.read_weights()}
        for a in program.activations:
            if a.name in program.overwritten:           # (staging's words: no tensor to compare)
                continue
            sl = slice(a.base, a.end)
            snap[a.name] = {"data": model.act[sl].copy(), "relu": model.act_relu[sl].copy(),
                            "sat": model.act_sat[sl].copy(), "pool": model.act_pool[sl].copy()}
        for e in program.errors:
            if e.name not in program.overwritten:        # (staging's words: no tensor to compare)
                snap[e.name] = model.err[e.base:e.end].copy()
        want.append(snap)

    async def bench(ctx, dut):
        driver = EngineDriver(program, AmaranthTransport(ctx, dut))

        async def after_step(s, cycles):
            snap = {"weights": await driver.read_weights()}
            for a in program.activations:
                if a.name not in program.overwritten:
                    snap[a.name] = await driver.read_act_fields(a)
            for e in program.errors:
                if e.name not in program.overwritten:
                    snap[e.name] = await driver.read_err(e)
            snap["counters"] = await driver.counters()
            if hasattr(dut, "ext_fault"):              # the external memory's sticky fault flag
                snap["ext_fault"] = ctx.get(dut.ext_fault)
                if hasattr(dut, "ext_fault_code"):       # the SDRAM model: which rule, when
                    snap["ext_fault_code"] = (ctx.get(dut.ext_fault_code), ctx.get(dut.ext_fault_cycle))
            got.append(snap)

        statuses = []
        if refused is not None:
            await driver.load_program()
            await driver.load_weights(weights)
            await driver.load_batch(*batches[0])
            for records in refused(program):
                await driver.write(Target.PROGRAM, 0, encode_program(records))
                try:
                    await driver.run(0, 1, 3)
                    statuses.append("ran")
                except EngineError as e:
                    statuses.append(e.status)
        await train_on_engine(driver, weights, batches, after_step)
        if refused is not None:
            got[0]["refused"] = statuses

    simulate(bench, config, timing)
    golden_weights = [weights]
    for s, (x, y) in enumerate(batches):
        golden_weights.append(golden.train_step(wage, golden_weights[-1], x, y, s, 3)[0])
    for s in range(2):
        want[s]["golden weights"] = golden_weights[s + 1]
        got[s]["golden weights"] = got[s]["weights"]
    return program, got, want


def conv_mismatches(got: dict, want: dict) -> list[str]:
    bad = []
    for name, w in want.items():
        g = got[name]
        if name in ("weights", "golden weights"):
            bad += [f"{name} {i}" for i, (a, b) in enumerate(zip(g, w)) if not np.array_equal(a, b)]
        elif isinstance(w, dict):
            bad += [f"{name}.{f}" for f in w if not np.array_equal(g[f], w[f])]
        elif not np.array_equal(g, w):
            bad.append(name)
    return bad


def test_conv_network_trains_bit_exactly_on_the_rtl(conv_steps):
    program, got, want = conv_steps
    assert any(a.name for a in program.activations)
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert any(not np.array_equal(a, b) for a, b in zip(want[1]["weights"], want[0]["weights"]))
    assert any(want[0][program.activations[0].name]["pool"].ravel())          # the pool indices are exercised


def test_conv_one_wrong_pool_index_is_caught(conv_steps):
    program, got, want = conv_steps
    name = program.activations[0].name
    bad = {**want[0], name: {**want[0][name], "pool": want[0][name]["pool"].copy()}}
    bad[name]["pool"][0, 0] ^= 1
    assert conv_mismatches(got[0], bad) == [f"{name}.pool"]


def test_spilled_tensors_train_bit_exactly_through_the_external_port(conv_spill_steps):
    program, got, want = conv_spill_steps
    tensors = [t for t in [program.inputs, *program.activations, *program.errors] if t is not None]
    chip = CONV_SPILL_CONFIG.data_words
    assert {t.name for t in tensors if t.base >= chip} == {"inputs"}
    assert [(t.name, chip - t.base) for t in tensors if t.base < chip < t.end] == [("E0", 49)]   # straddles
    assert program.straddled == {"E0": 49, "W1": 8}        # W1: its first 8 words on chip, 64 external
    assert [(w.base, w.end) for w in program.weights] == [(0, 12), (32, 104), (12, 32)]
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    # the memory model's sticky out-of-range flag: every command stayed in the external words (no
    # padding beat of a pattern reaches the port)
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    c0, c1 = got[0]["counters"], got[1]["counters"]
    # the step reads the spilled input, E0 and W1 and writes E0's external words and W1; the host's
    # batch writes and weight read-backs count too
    assert c1["ext_read_words"] > c0["ext_read_words"] > 0
    assert c1["ext_write_words"] - c0["ext_write_words"] >= 324 + (108 - 49) + (72 - 8)
    assert got[0]["counters"]["run_cycles"] > 0
    assert c1["array_beats"] == 2 * c0["array_beats"] == 2 * array_beats(program)


def test_spilled_one_wrong_bit_is_caught(conv_spill_steps):
    program, got, want = conv_spill_steps
    bad = {**want[1], "E0": want[1]["E0"].copy()}
    bad["E0"][5, 1] ^= 4
    assert conv_mismatches(got[1], bad) == ["E0"]


# ---- store-then-quantise ---------------------------------------------------------------------------

#: A 64-row sum buffer: every error and gradient product of the conv network stores its sums except
#: conv1's gradient (72 rows), which computes twice, so both kinds run in one program.
CONV_STORE_CONFIG = CONV_CONFIG.replace(sum_words=64)


@pytest.fixture(scope="module")
def conv_store_steps():
    return run_conv_steps(CONV_STORE_CONFIG)


def test_store_then_quantise_trains_bit_exactly_with_the_array_run_once(conv_store_steps):
    program, got, want = conv_store_steps
    stored = [str(ins) for ins in program.instructions if getattr(ins, "stored", 0)]
    twice = [str(ins) for ins in program.instructions if ins.op in two_pass_products() and not ins.stored]
    assert stored == ["ERR layer 2", "GRAD layer 2", "CONV_ERR layer 1 +unpool", "CONV_GRAD layer 0"]
    assert twice == ["CONV_GRAD layer 1"]
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    # the array ran the stored products once: the counter equals the compiler's count, which is
    # below the compute-twice program's
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] == 2 * c0["array_beats"] == 2 * array_beats(program)
    assert array_beats(program) < array_beats(compile_network(CONV_CONFIG))


def test_store_then_quantise_shortens_the_gradient_phase(conv_steps, conv_store_steps):
    """conv0's gradient reduces over 108 positions per 12 result rows: reading the rows back beats
    running the product again."""
    twice, stored = conv_steps[1][1]["counters"], conv_store_steps[1][1]["counters"]
    assert stored["grad_cycles"] < twice["grad_cycles"]
    assert stored["run_cycles"] < twice["run_cycles"]


def test_store_then_quantise_one_wrong_bit_is_caught(conv_store_steps):
    program, got, want = conv_store_steps
    bad = {**want[1], "weights": [w.copy() for w in want[1]["weights"]]}
    bad["weights"][0].flat[3] += 1
    assert conv_mismatches(got[1], bad) == ["weights 0"]


def test_store_then_quantise_on_an_engine_without_convolution():
    """The MLP with a 16-row sum buffer (ERR 1 and GRAD 1 store, GRAD 0's 32 rows compute twice):
    two steps' weights equal golden's, with fewer array beats than compute-twice. (Not fewer cycles:
    this network's products are shorter than the quantiser's turnaround between the passes.)"""
    rng = np.random.default_rng(seed_for("engine-store-fc"))
    batches = [(rng.integers(0, 256, size=(6, 1, 4, 4), dtype=np.uint8), rng.integers(0, 4, size=6))
               for _ in range(2)]
    weights = golden.init_weights(WAGE)
    want = [weights]
    for s, (x, y) in enumerate(batches):
        want.append(golden.train_step(WAGE, want[-1], x, y, s, 3)[0])
    got = {}
    for config in (CONFIG, CONFIG.replace(sum_words=16)):
        program = compile_network(config)
        runs = got[config.sum_words] = {"weights": [], "cycles": [], "stored": sum(
            getattr(ins, "stored", 0) for ins in program.instructions)}

        async def bench(ctx, dut, program=program, runs=runs):
            driver = EngineDriver(program, AmaranthTransport(ctx, dut))

            async def after_step(s, cycles):
                runs["cycles"].append(cycles)
                runs["weights"].append(await driver.read_weights())
                runs["beats"] = (await driver.counters())["array_beats"]
                runs["predicted"] = 2 * array_beats(program)

            await train_on_engine(driver, weights, batches, after_step)

        simulate(bench, config)
    assert got[0]["stored"] == 0 and got[16]["stored"] == 2
    for runs in got.values():
        for s in range(2):
            for layer, (a, b) in enumerate(zip(runs["weights"][s], want[s + 1])):
                np.testing.assert_array_equal(a, b, err_msg=f"step {s} layer {layer}")
        assert runs["beats"] == runs["predicted"]
    assert got[16]["beats"] < got[0]["beats"]


def test_stored_record_without_room_in_the_sum_buffer_is_refused():
    """A stored record whose rows exceed the build's sum buffer (here: none) answers BAD_INSTRUCTION
    rather than reading rows that were never written; the engine's own program then runs."""
    from hw.engine.encoding import encode_program
    foreign = compile_network(CONFIG.replace(sum_words=16))
    assert run_foreign_records(compile_network(CONFIG), encode_program(foreign.instructions)) == \
        [Status.BAD_INSTRUCTION, True]


#: The spilled network with a 16-row sum buffer and external sums: ERR 2 and conv0's gradient
#: store on chip, conv1's error product (28 rows, 2 external words each) through the port, and
#: the two products whose beats are fewer than the words they would move compute twice.
CONV_SPILL_STORE_CONFIG = CONV_SPILL_CONFIG.replace(sum_words=16, external_sum_words=4096)
#: Batch 4 (batch · width a multiple of the lanes): conv1's error product runs in 9 parts, three
#: column groups (kernel columns {0}, {1}, {2} valid) of three row bands (kernel rows {0}, {1},
#: {2}), its sums external; on chip with a 64-row buffer.
CONV_BANDS_EXT_CONFIG = CONV_SPILL_STORE_CONFIG.replace(wage=CONV_WAGE.replace(batch_size=4))
CONV_BANDS_CONFIG = CONV_CONFIG.replace(wage=CONV_WAGE.replace(batch_size=4), sum_words=64)


@pytest.fixture(scope="module")
def conv_spill_store_steps():
    return run_conv_steps(CONV_SPILL_STORE_CONFIG, SPILL_TIMING)


def test_external_sums_train_bit_exactly(conv_spill_store_steps, conv_spill_steps):
    from hw.engine.isa import STORE_CHIP, STORE_EXTERNAL
    program, got, want = conv_spill_store_steps
    where = {str(ins): ins.stored for ins in program.instructions if ins.op in two_pass_products()}
    assert where == {"ERR layer 2": STORE_CHIP, "GRAD layer 2": 0, "CONV_ERR layer 1 +unpool": STORE_EXTERNAL,
                     "CONV_GRAD layer 1": 0, "CONV_GRAD layer 0": STORE_CHIP}
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] == 2 * c0["array_beats"] == 2 * array_beats(program)
    # CONV_ERR 1's 28 rows go out as 2 words each and come back; the compute-twice run instead
    # reads its spilled operand (E1 is on chip, but E0's writes and the input's reads are the same)
    twice = conv_spill_steps[1]
    sums_written = 28 * CONV_SPILL_STORE_CONFIG.sum_chunks
    assert c0["ext_write_words"] == twice[0]["counters"]["ext_write_words"] + sums_written
    assert c0["run_cycles"] < twice[0]["counters"]["run_cycles"]


def parts_out_of_order(program) -> list[list]:
    """A next part without a first, and a first part (or a first and a next) followed by an END."""
    ins = program.instructions
    first = next(n for n, i in enumerate(ins) if getattr(i, "part", 0) == 1)
    return [[ins[first + 1], ins[-1]], [ins[first], ins[-1]], [ins[first], ins[first + 1], ins[-1]]]


@pytest.mark.parametrize("config", [CONV_BANDS_CONFIG, CONV_BANDS_EXT_CONFIG], ids=["chip", "external"])
def test_error_product_in_row_bands_trains_bit_exactly(config):
    """A valid convolution's error product in parts (conv.compile_conv_err_bands): each part walks
    only the kernel rows valid in its row band and the kernel columns valid in its column group, the
    finish record quantises every part's rows from the stored sums. Parts out of order first
    (:func:`parts_out_of_order`) answer BAD_INSTRUCTION; an open product is completed with zero rows
    (FLUSH), so the two steps that then run are still exact, every tensor after each."""
    from hw.engine.conv import PART_FINISH, PART_FIRST, PART_NEXT
    program, got, want = run_conv_steps(config, SPILL_TIMING if config.external_words else None,
                                        refused=parts_out_of_order)
    assert got[0]["refused"] == [Status.BAD_INSTRUCTION] * 3
    parts = [ins.part for ins in program.instructions if getattr(ins, "part", 0)]
    assert parts == [PART_FIRST] + [PART_NEXT] * 8 + [PART_FINISH]
    assert [ins.a.nk for ins in program.instructions if getattr(ins, "part", 0) in (PART_FIRST, PART_NEXT)] == [2] * 9
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
        assert got[s].get("ext_fault", 0) == 0
    c0, c1 = got[0]["counters"], got[1]["counters"]
    # (the refused records' beats count in the first step's counters)
    assert c1["array_beats"] - c0["array_beats"] == array_beats(program) <= c0["array_beats"]
    # no room for 9 parts: 3 row bands over whole rows; no room for those: whole
    from hw.engine.encoding import encode_program
    rows = compile_network(config.replace(program_words=len(encode_program(program.instructions)) - 1))
    assert [ins.part for ins in rows.instructions if getattr(ins, "part", 0)] == \
        [PART_FIRST, PART_NEXT, PART_NEXT, PART_FINISH]
    whole = compile_network(config.replace(program_words=len(encode_program(rows.instructions)) - 1))
    assert not any(getattr(ins, "part", 0) for ins in whole.instructions)
    assert array_beats(program) < array_beats(rows) < array_beats(whole)
