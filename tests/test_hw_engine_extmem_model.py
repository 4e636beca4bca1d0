"""ExternalMemoryModel against a Python reference memory: random traffic with stalls on every
stream, write data before and long after its command, streaming throughput and latency, no word
lost while r stalls, the fault flag, the parameter checks and a fast Verilog conversion of the
engine-sized memory. A scoreboard self-test shows a single wrong bit fails the comparison."""

import random
import re
import time

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hw.engine.extmem_model import RTLIL_INIT_SKIP, ExternalMemoryModel
from tests.support import seed_for, send_stalling


def reference_reads(commands, write_data):
    """(address, word) of every read word, in order, from a dict memory (zero-initialised) that
    executes ``commands`` ((addr, count, write) tuples) in order; ``write_data`` is the flat list of
    write words in command order."""
    memory, words, expected = {}, iter(write_data), []
    for addr, count, write in commands:
        for a in range(addr, addr + count):
            if write:
                memory[a] = next(words)
            else:
                expected.append((a, memory.get(a, 0)))
    return expected


def check_reads(got, expected):
    """The scoreboard: every read word, in order, equals the reference's."""
    assert len(got) == len(expected), f"{len(got)} read words, want {len(expected)}"
    for i, (word, (addr, want)) in enumerate(zip(got, expected)):
        assert word == want, f"read word {i} (address {addr}): got {word:#x}, want {want:#x}"


def random_traffic(rng, dut, n_commands):
    """Read and write bursts of random counts over a small window, so reads often hit fresh writes."""
    window = min(dut.depth, 6 * dut.max_burst + 8)
    base = rng.randrange(dut.depth - window + 1)
    commands, write_data = [], []
    for _ in range(n_commands):
        count = rng.randint(1, dut.max_burst)
        addr = base + rng.randrange(window - count + 1)
        write = rng.random() < 0.5
        commands.append((addr, count, write))
        if write:
            write_data += [rng.getrandbits(dut.data_width) for _ in range(count)]
    return commands, write_data


def settle_cycles(dut):
    """Cycles after which an idle-fed model has finished everything it accepted."""
    return 2 * (dut.command_cycles + dut.max_burst * dut.cycles_per_word) + dut.latency + 16


def run_traffic(dut, commands, write_data, rng, *, cmd_stall=0.0, w_stall=0.0, r_stall=0.0,
                max_cycles=20000):
    """Simulate ``dut`` fed with ``commands`` and ``write_data`` by independent producers (each
    stalling with the given probability per beat) and drained by a consumer whose ``r.ready`` is
    low with probability ``r_stall``. Checks the stream rules on ``r``, that nothing is left over
    and the statistics; returns the read words."""
    port = dut.port
    n_reads = sum(count for _, count, write in commands if not write)
    got, producers_done = [], []

    async def command_producer(ctx):
        await send_stalling(ctx, port.cmd, [{"addr": a, "count": c, "write": w} for a, c, w in commands], rng,
                            cmd_stall)
        producers_done.append("cmd")

    async def write_producer(ctx):
        await send_stalling(ctx, port.w, write_data, rng, w_stall)
        producers_done.append("w")

    async def read_consumer(ctx):
        cycles, held = 0, None             # held: the payload offered but not taken last cycle
        while len(got) < n_reads or len(producers_done) < 2:
            ready = rng.random() >= r_stall
            ctx.set(port.r.ready, ready)
            _, _, valid, word = await ctx.tick().sample(port.r.valid, port.r.payload)
            if held is not None:           # stream rules: valid stays up and the payload holds
                assert valid and word == held, f"cycle {cycles}: r dropped or changed an offered word"
            held = word if valid and not ready else None
            if valid and ready:
                got.append(word)
            cycles += 1
            assert cycles < max_cycles, f"stuck: {len(got)}/{n_reads} read words after {cycles} cycles"
        ctx.set(port.r.ready, 1)
        for _ in range(settle_cycles(dut)):
            _, _, valid = await ctx.tick().sample(port.r.valid)
            assert not valid, "an extra read word"
        assert ctx.get(dut.read_words) == n_reads
        assert ctx.get(dut.write_words) == len(write_data)
        assert ctx.get(dut.commands) == len(commands)
        assert ctx.get(port.cmd.ready) and ctx.get(port.w.ready)
        assert ctx.get(dut.fault) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(command_producer)
    sim.add_testbench(write_producer)
    sim.add_testbench(read_consumer)
    sim.run()
    return got


TRAFFIC_CASES = {
    # name: model parameters, (cmd, w, r) stall probabilities, commands
    "lat1-fast": (dict(latency=1, cycles_per_word=1, command_cycles=0, max_burst=16), (0.3, 0.3, 0.3), 150),
    "lat12-fast-nostall": (dict(latency=12, cycles_per_word=1, command_cycles=0, max_burst=16), (0, 0, 0), 150),
    "lat12-slow-overhead": (dict(latency=12, cycles_per_word=3, command_cycles=4, max_burst=16), (0.3, 0.3, 0.5), 80),
    "lat1-slow-single": (dict(latency=1, cycles_per_word=3, command_cycles=0, max_burst=1), (0.2, 0.2, 0.3), 250),
    "lat2-banked": (dict(latency=2, cycles_per_word=1, command_cycles=4, max_burst=4, depth=100, bank_words=32),
                    (0.3, 0.5, 0.6), 200),
    "lat5-heavy-r-stall": (dict(latency=5, cycles_per_word=1, command_cycles=0, max_burst=16), (0.1, 0.1, 0.8), 80),
}


def make_model(params, depth=300, data_width=48):
    params = dict(params)
    return ExternalMemoryModel(params.pop("depth", depth), data_width, **params)


@pytest.mark.parametrize("case", list(TRAFFIC_CASES))
def test_random_traffic_matches_the_reference(case):
    params, (cmd_stall, w_stall, r_stall), n_commands = TRAFFIC_CASES[case]
    rng = random.Random(seed_for(f"extmem-traffic-{case}"))
    dut = make_model(params)
    commands, write_data = random_traffic(rng, dut, n_commands)
    expected = reference_reads(commands, write_data)
    assert any(word for _, word in expected), "the traffic should read back written data"
    got = run_traffic(dut, commands, write_data, rng, cmd_stall=cmd_stall, w_stall=w_stall, r_stall=r_stall)
    check_reads(got, expected)


def test_scoreboard_catches_one_wrong_bit():
    """The comparison can fail: against a reference in which one written word that is read back
    later has one bit flipped, the same simulated words are rejected."""
    rng = random.Random(seed_for("extmem-mutation"))
    dut = make_model(dict(latency=3, cycles_per_word=1, command_cycles=1))
    commands, write_data = random_traffic(rng, dut, 30)
    got = run_traffic(dut, commands, write_data, rng, cmd_stall=0.2, w_stall=0.2, r_stall=0.2)
    expected = reference_reads(commands, write_data)
    check_reads(got, expected)
    for i in rng.sample(range(len(write_data)), len(write_data)):
        mutated = list(write_data)
        mutated[i] ^= 1 << rng.randrange(dut.data_width)
        wrong = reference_reads(commands, mutated)
        if wrong != expected:
            break
    else:
        pytest.fail("no write word of this traffic is read back")
    with pytest.raises(AssertionError, match="read word"):
        check_reads(got, wrong)


async def put(ctx, stream, payload, limit=1000):
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    for _ in range(limit):
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            break
    else:
        raise AssertionError(f"{payload!r} not taken within {limit} cycles")
    ctx.set(stream.valid, 0)


async def get_words(ctx, stream, n, limit=1000):
    words = []
    ctx.set(stream.ready, 1)
    for _ in range(limit):
        _, _, valid, word = await ctx.tick().sample(stream.valid, stream.payload)
        if valid:
            words.append(word)
            if len(words) == n:
                break
    ctx.set(stream.ready, 0)
    assert len(words) == n, f"{len(words)}/{n} words within {limit} cycles"
    return words


def test_write_data_before_and_long_after_its_command():
    """A whole burst of write data may precede its command (one sequential initiator: data, then
    command); data may also come long after, and a read issued meanwhile waits for it (in order)."""
    dut = ExternalMemoryModel(64, 32, max_burst=16, latency=4, cycles_per_word=2, command_cycles=3)
    port = dut.port
    early = [0x1000 + i for i in range(16)]
    late = [0x2000 + i for i in range(5)]

    async def bench(ctx):
        for word in early:                     # data first: each word is taken without a command
            await put(ctx, port.w, word)
        await put(ctx, port.cmd, {"addr": 8, "count": 16, "write": 1})
        await put(ctx, port.cmd, {"addr": 8, "count": 16, "write": 0})
        assert await get_words(ctx, port.r, 16) == early

        await put(ctx, port.cmd, {"addr": 10, "count": 5, "write": 1})
        await put(ctx, port.cmd, {"addr": 9, "count": 7, "write": 0})   # overlaps the pending write
        ctx.set(port.r.ready, 1)
        for _ in range(60):                    # the read must wait for the write's data
            _, _, valid = await ctx.tick().sample(port.r.valid)
            assert not valid
        assert ctx.get(dut.write_words) == 16
        for word in late:
            await put(ctx, port.w, word)
        assert await get_words(ctx, port.r, 7) == [early[1]] + late + [early[7]]
        assert ctx.get(dut.fault) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("latency, cycles_per_word, command_cycles",
                         [(24, 1, 0), (12, 3, 0), (12, 1, 4), (1, 2, 2)])
def test_streaming_throughput_and_latency(latency, cycles_per_word, command_cycles):
    """Back-to-back bursts of 16 with r.ready (and w.valid) always high move one word every
    ``cycles_per_word`` cycles plus ``command_cycles`` per command: the exact figure the bus allows,
    so a model that waits out the latency between bursts (latency 24 > 16 words) fails. The first
    read word appears at accept + 2 + command_cycles + latency (the documented timing)."""
    bursts, burst = 12, 16
    dut = ExternalMemoryModel(1024, 64, latency=latency, cycles_per_word=cycles_per_word,
                              command_cycles=command_cycles)
    port = dut.port
    words = bursts * burst
    # from the first word to the last: every word's bus slot but the last one's, plus the overheads
    span = (words - 1) * cycles_per_word + (bursts - 1) * command_cycles
    cycle = [0]
    accepted_at, taken_at = [], []

    async def clock(ctx):
        while True:
            await ctx.tick()
            cycle[0] += 1
            assert cycle[0] < 20000, "stuck"

    async def commands(ctx):
        ctx.set(port.w.valid, 1)               # write data always there (its payload: the word index)
        for write in (1, 0):
            for b in range(bursts):
                ctx.set(port.cmd.payload, {"addr": b * burst, "count": burst, "write": write})
                ctx.set(port.cmd.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(port.cmd.ready)
                    if ready:
                        accepted_at.append(cycle[0] - 1)
                        break
            ctx.set(port.cmd.valid, 0)
            if write:                          # let the writes finish, then time them
                while ctx.get(dut.write_words) < words:
                    await ctx.tick()
                write_done = cycle[0]
                first_write = accepted_at[0] + 2 + command_cycles
                assert write_done == first_write + span + 1, "write bursts do not stream at the bus rate"
                assert ctx.get(dut.busy_cycles) == span + command_cycles + 1
                ctx.set(port.w.valid, 0)
                await ctx.tick().repeat(3)

    async def writes(ctx):
        n = 0
        while n < words:
            ctx.set(port.w.payload, n)
            _, _, valid, ready = await ctx.tick().sample(port.w.valid, port.w.ready)
            n += valid and ready

    async def reads(ctx):
        ctx.set(port.r.ready, 1)
        while len(taken_at) < words:
            _, _, valid, word = await ctx.tick().sample(port.r.valid, port.r.payload)
            if valid:
                assert word == len(taken_at), "read data"
                taken_at.append(cycle[0] - 1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(clock)
    sim.add_testbench(commands)
    sim.add_testbench(writes)
    sim.add_testbench(reads)
    sim.run()
    first_read_accept = accepted_at[bursts]
    assert taken_at[0] == first_read_accept + 2 + command_cycles + latency, "first-word latency"
    measured = taken_at[-1] - taken_at[0]
    print(f"latency {latency}, {cycles_per_word} cycles/word, {command_cycles} cycles/command: "
          f"{words} words in {measured + 1} cycles ({words / (measured + 1):.3f} words/cycle)")
    assert measured == span, f"{measured} cycles from first to last read word, the bus allows {span}"


def test_no_word_lost_while_r_stalls():
    """With r.ready low the model issues only as many words as its read queue holds, then waits;
    releasing r delivers every word, in order."""
    dut = ExternalMemoryModel(256, 32, latency=6)
    port = dut.port
    n = 64

    async def initiator(ctx):                  # the read commands back up while r stalls
        for b in range(n // 16):
            await put(ctx, port.cmd, {"addr": 16 * b, "count": 16, "write": 1})
            for word in range(16):
                await put(ctx, port.w, 0xA000 + 16 * b + word)
        for b in range(n // 16):
            await put(ctx, port.cmd, {"addr": 16 * b, "count": 16, "write": 0})

    async def consumer(ctx):
        await ctx.tick().until(dut.read_words == 1)
        await ctx.tick().repeat(200)             # r.ready is low all along
        assert ctx.get(dut.read_words) == dut.read_queue_depth
        assert ctx.get(port.r.valid)
        assert await get_words(ctx, port.r, n) == [0xA000 + w for w in range(n)]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(initiator)
    sim.add_testbench(consumer)
    sim.run()


def test_fault_on_an_out_of_range_command():
    """addr + count > depth sets the sticky fault; the command keeps the stream contract (the write
    takes its words, the read returns zeros) but the array is left alone."""
    dut = ExternalMemoryModel(100, 16, addr_bits=24, max_burst=16, latency=2)
    port = dut.port

    async def bench(ctx):
        await put(ctx, port.cmd, {"addr": 95, "count": 5, "write": 1})          # the last 5 words: fine
        for word in range(5):
            await put(ctx, port.w, 0x100 + word)
        await put(ctx, port.cmd, {"addr": 95, "count": 5, "write": 0})
        assert await get_words(ctx, port.r, 5) == [0x100 + w for w in range(5)]
        assert ctx.get(dut.fault) == 0
        await put(ctx, port.cmd, {"addr": 95, "count": 6, "write": 1})          # one word too far
        for word in range(6):
            await put(ctx, port.w, 0x200 + word)
        await ctx.tick().repeat(5)
        assert ctx.get(dut.fault) == 1
        await put(ctx, port.cmd, {"addr": 0xFFFFF0, "count": 16, "write": 0})   # far beyond: zeros
        assert await get_words(ctx, port.r, 16) == [0] * 16
        await put(ctx, port.cmd, {"addr": 95, "count": 5, "write": 0})          # untouched
        assert await get_words(ctx, port.r, 5) == [0x100 + w for w in range(5)]
        assert ctx.get(dut.fault) == 1                                          # sticky

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_zero_count_command_faults_and_moves_nothing():
    dut = ExternalMemoryModel(64, 8, latency=2)
    port = dut.port

    async def bench(ctx):
        await put(ctx, port.cmd, {"addr": 3, "count": 0, "write": 0})
        await put(ctx, port.cmd, {"addr": 3, "count": 1, "write": 1})          # the port keeps working
        await put(ctx, port.w, 0x5A)
        await put(ctx, port.cmd, {"addr": 3, "count": 1, "write": 0})
        assert await get_words(ctx, port.r, 1) == [0x5A]
        assert ctx.get(dut.fault) == 1
        assert (ctx.get(dut.read_words), ctx.get(dut.write_words), ctx.get(dut.commands)) == (1, 1, 3)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_verilog_conversion_of_the_engine_sized_memory_is_fast():
    """2**18 × 192 bits: with the (zero) initial contents of the banks left out of the RTLIL it
    converts in seconds (with them, minutes: see the model's docstring); the banks get no
    ``initial`` block while the model's other memories keep theirs."""
    assert RTLIL_INIT_SKIP
    verilog.convert(ExternalMemoryModel(16, 8), name="warmup", emit_src=False)   # yosys start-up
    start = time.perf_counter()
    text = verilog.convert(ExternalMemoryModel(2**18, 192, addr_bits=24, latency=12, cycles_per_word=3,
                                               command_cycles=4), name="extmem", emit_src=False)
    elapsed = time.perf_counter() - start
    print(f"2**18 x 192 bits: verilog.convert {elapsed:.1f} s, {len(text)} characters")
    assert elapsed < 30
    assert "reg [191:0] bank15 [16383:0];" in text
    assert not re.search(r"\bbank\d+\[\d+\] = ", text), "a bank has initial contents"
    assert "read_queue[0] = 192'h" in text, "the other memories' initial contents went missing"


@pytest.mark.parametrize("kwargs, message", [
    (dict(latency=-1), "latency=-1: must be an integer in 1..1024"),
    (dict(latency=0), "latency=0"),
    (dict(latency=2.0), "latency=2.0"),
    (dict(latency=True), "latency=True"),
    (dict(cycles_per_word=0), "cycles_per_word=0"),
    (dict(command_cycles=-1), "command_cycles=-1"),
    (dict(max_burst=0), "max_burst=0"),
    (dict(depth=0), "depth=0"),
    (dict(data_width=0), "data_width=0"),
    (dict(depth=1000, addr_bits=9), "addr_bits=9: too narrow for depth=1000"),
    (dict(addr_bits=33), "addr_bits=33"),
    (dict(bank_words=48), "bank_words=48: must be a power of two"),
])
def test_parameter_checks_name_the_bad_value(kwargs, message):
    params = dict(depth=256, data_width=32) | kwargs
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        ExternalMemoryModel(params.pop("depth"), params.pop("data_width"), **params)


def test_repr_and_defaults():
    dut = ExternalMemoryModel(1000, 192, latency=7)
    big = ExternalMemoryModel(2**18, 192, addr_bits=24)
    dut._MustUse__silence = big._MustUse__silence = True       # inspected, not elaborated
    assert dut.addr_bits == 10 and dut.max_burst == 16 and dut.read_queue_depth >= 7 + 2
    assert repr(dut) == ("ExternalMemoryModel(depth=1000, data_width=192, addr_bits=10, max_burst=16, "
                         "latency=7, cycles_per_word=1, command_cycles=0, bank_words=1024)")
    assert big.banks == 16 and big.bank_words == 16384
