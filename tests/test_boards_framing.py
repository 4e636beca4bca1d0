"""boards.framing: host-side chunk encoder/decoder and the gateware ChunkDecoder/ChunkEncoder."""

import random

import pytest
from amaranth.sim import Simulator

from boards.framing import (FLAG_LAST, MAX_CHUNK_WORDS, ChunkDecoder, ChunkEncoder, FramingError, PacketDecoder,
                            encode_packet)
from tests.support import seed_for

BOUNDARY_LENGTHS = [1, 2, 254, 255, 256, 510, 511, 600]


def random_packet(rng, n):
    return [rng.choice([0, 0xFFFFFFFF, rng.randrange(1 << 32)]) for _ in range(n)]


def chunk_headers(data):
    """(count, flags) of each chunk of a well-formed byte stream."""
    out, i = [], 0
    while i < len(data):
        out.append((data[i], data[i + 1]))
        i += 2 + 4 * data[i]
    assert i == len(data)
    return out


# ---------------------------------------------------------------- host side

@pytest.mark.parametrize("n", BOUNDARY_LENGTHS)
def test_encode_decode_round_trip_at_chunk_boundaries(n):
    rng = random.Random(seed_for(f"framing-host-{n}"))
    words = random_packet(rng, n)
    data = encode_packet(words)
    chunks = -(-n // MAX_CHUNK_WORDS)
    assert len(data) == 2 * chunks + 4 * n
    counts = [MAX_CHUNK_WORDS] * (chunks - 1) + [n - MAX_CHUNK_WORDS * (chunks - 1)]
    assert chunk_headers(data) == [(c, FLAG_LAST if k == chunks - 1 else 0) for k, c in enumerate(counts)]
    assert data[2:6] == words[0].to_bytes(4, "little")
    assert PacketDecoder().feed(data) == [words]


def test_decoder_takes_any_slicing_of_a_stream_of_packets():
    rng = random.Random(seed_for("framing-host-slices"))
    packets = [random_packet(rng, n) for n in [1, 300, 255, 3, 256, 1, 1, 17]]
    data = b"".join(encode_packet(p) for p in packets)
    dec, got, i = PacketDecoder(), [], 0
    while i < len(data):
        step = rng.choice([1, 2, 3, 5, 100])
        got += dec.feed(data[i:i + step])
        i += step
    assert got == packets and dec.idle and dec.offset == len(data)
    assert PacketDecoder().feed(data) == packets
    partial = PacketDecoder()
    assert partial.feed(data[:-1]) == packets[:-1] and not partial.idle


def test_encode_rejects_empty_packets_and_bad_words():
    with pytest.raises(ValueError, match=r"words=\[\]"):
        encode_packet([])
    for bad, shown in [(-1, "-1"), (1 << 32, "4294967296"), ("7", "'7'"), (True, "True"), (1.0, "1.0")]:
        with pytest.raises(ValueError, match=rf"words\[2\]={shown}:"):
            encode_packet([1, 2, bad])


def test_decoder_errors_name_the_offset_and_byte():
    good = encode_packet([5, 6])
    dec = PacketDecoder()
    with pytest.raises(FramingError, match=r"byte 0x00 at offset 10: chunk header with word count 0") as e:
        dec.feed(good + bytes([0, 1]) + good)
    assert (e.value.offset, e.value.byte, e.value.packets) == (10, 0, [[5, 6]])
    assert isinstance(e.value, ValueError)
    assert dec.idle and dec.feed(good) == [[5, 6]]              # usable again at a header

    dec = PacketDecoder()
    with pytest.raises(FramingError, match=r"byte 0x81 at offset 7: chunk header with reserved flag bits set \(0x80\)"):
        dec.feed(encode_packet([9]) + bytes([1, 0x81]))
    dec = PacketDecoder()
    dec.feed(bytes([3]))
    with pytest.raises(FramingError, match=r"offset 1") as e:
        dec.feed(bytes([0x02]))
    assert e.value.byte == 0x02


# ---------------------------------------------------------------- gateware

def run_decoder(stream_bytes, rng, n_words, valid_p=0.7, ready_p=0.6):
    dut = ChunkDecoder()
    words, errors, finished = [], [], []

    async def producer(ctx):
        for b in stream_bytes:
            while rng.random() > valid_p:
                ctx.set(dut.bytes.valid, 0)
                await ctx.tick()
            ctx.set(dut.bytes.valid, 1)
            ctx.set(dut.bytes.payload, b)
            await ctx.tick().until(dut.bytes.ready)
        ctx.set(dut.bytes.valid, 0)
        finished.append(True)

    async def consumer(ctx):
        for _ in range(20 * len(stream_bytes) + 1000):
            if len(words) == n_words:
                break
            ctx.set(dut.words.ready, rng.random() < ready_p)
            _, _, valid, ready, payload, error = await ctx.tick().sample(
                dut.words.valid, dut.words.ready, dut.words.payload, dut.error)
            if valid and ready:
                words.append((payload.data, payload.last))
            if error:
                errors.append(1)
        assert len(words) == n_words, f"only {len(words)} of {n_words} words came out"
        for _ in range(20):                                     # nothing more comes out
            ctx.set(dut.words.ready, 1)
            _, _, valid, error = await ctx.tick().sample(dut.words.valid, dut.error)
            assert not valid
            if error:
                errors.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)             # a stuck producer cannot hang the run
    sim.add_testbench(consumer)
    sim.run()
    assert finished, "the producer did not get all its input in"
    return words, errors


def flat_with_last(packets):
    return [(w, i == len(p) - 1) for p in packets for i, w in enumerate(p)]


def test_chunk_decoder_yields_words_with_last_at_packet_ends():
    rng = random.Random(seed_for("framing-chunk-decoder"))
    packets = [random_packet(rng, n) for n in [1, 255, 256, 300, 2, 1] + [rng.randint(1, 20) for _ in range(5)]]
    data = b"".join(encode_packet(p) for p in packets)
    words, errors = run_decoder(data, rng, sum(map(len, packets)))
    assert words == flat_with_last(packets)
    assert errors == []


def test_chunk_decoder_pulses_error_and_skips_bad_chunks():
    rng = random.Random(seed_for("framing-chunk-decoder-errors"))
    a, b, c = [0x11111111], random_packet(rng, 5), random_packet(rng, 3)
    data = (encode_packet(a) + bytes([0, FLAG_LAST])                 # count 0: header only
            + encode_packet(b) + bytes([2, 0x80 | FLAG_LAST]) + bytes(range(8))   # reserved bit: 2 words dropped
            + encode_packet(c))
    words, errors = run_decoder(data, rng, 1 + 5 + 3)
    assert words == flat_with_last([a, b, c])
    assert len(errors) == 2


def run_encoder(packets, rng, valid_p=0.8, ready_p=0.6, ready_every=None):
    dut = ChunkEncoder()
    expected_len = sum(len(encode_packet(p)) for p in packets)
    out, starved, finished = bytearray(), [], []

    async def producer(ctx):
        for p in packets:
            for i, w in enumerate(p):
                while rng.random() > valid_p:
                    ctx.set(dut.words.valid, 0)
                    await ctx.tick()
                ctx.set(dut.words.valid, 1)
                ctx.set(dut.words.payload, {"data": w, "last": i == len(p) - 1})
                await ctx.tick().until(dut.words.ready)
        ctx.set(dut.words.valid, 0)
        finished.append(True)

    async def consumer(ctx):
        for cycle in range(20 * expected_len * (ready_every or 1) + 1000):
            if len(out) == expected_len:
                break
            ready = cycle % ready_every == 0 if ready_every else rng.random() < ready_p
            ctx.set(dut.bytes.ready, ready)
            _, _, valid, ready, payload = await ctx.tick().sample(dut.bytes.valid, dut.bytes.ready, dut.bytes.payload)
            if valid and ready:
                out.append(payload)
            elif ready and out:
                starved.append(len(out))
        assert len(out) == expected_len, f"only {len(out)} of {expected_len} bytes came out"
        for _ in range(20):
            assert not ctx.get(dut.bytes.valid)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)             # a stuck producer cannot hang the run
    sim.add_testbench(consumer)
    sim.run()
    assert finished, "the producer did not get all its input in"
    return bytes(out), starved


def decode_or_error(data):
    try:
        return PacketDecoder().feed(data)
    except FramingError as e:
        return e


def test_chunk_encoder_output_decodes_to_the_input_packets():
    rng = random.Random(seed_for("framing-chunk-encoder"))
    packets = [random_packet(rng, n) for n in [1, 255, 256, 300, 1, 1] + [rng.randint(1, 40) for _ in range(6)]]
    rng.shuffle(packets)
    data, _ = run_encoder(packets, rng)
    assert decode_or_error(data) == packets
    assert data == b"".join(encode_packet(p) for p in packets)
    # the comparison catches a single flipped bit anywhere
    for _ in range(20):
        pos, bit = rng.randrange(len(data)), rng.randrange(8)
        mutated = bytearray(data)
        mutated[pos] ^= 1 << bit
        assert decode_or_error(bytes(mutated)) != packets, (pos, bit)


def test_chunk_encoder_keeps_up_with_a_slow_consumer():
    """A producer with words always ready and a consumer taking a byte every 4th clock (a UART in
    miniature): once the first chunk has started, no ready clock finds the output empty, i.e. the
    FIFO refills while a chunk is sent and the next 255-word chunk is complete in time."""
    rng = random.Random(seed_for("framing-chunk-encoder-rate"))
    packets = [random_packet(rng, 3 * MAX_CHUNK_WORDS + 10)]
    data, starved = run_encoder(packets, rng, valid_p=1.0, ready_every=4)
    assert decode_or_error(data) == packets
    assert starved == []
