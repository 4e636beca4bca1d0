"""boards.top: the engine behind the serial host link, driven bit by bit on its UART pins.

The board core (link + engine, no PLL) is simulated with a Python UART peer at 8 clocks per bit:
IDENT must come back with the engine's identity, labels written through the link must read back,
and a bad command must get its error response with the link still serving.
"""

import random

from amaranth.sim import Simulator

from boards.framing import PacketDecoder, encode_packet
from boards.top import STATUS_BITS, EngineBoardCore
from hw.engine.protocol import IDENT, Command, Status, Target, header, ident_values
from tests.support import seed_for
from tests.test_boards_hostlink import BAUD, CLK, R, LinePeer, uart_wave
from tests.test_hw_engine import CONFIG


def exchange(requests, rng, *, responses_expected):
    """Send ``requests`` (packets of words) to the board core's rx pin; return the decoded responses
    and the status bits seen (OR over the run)."""
    dut = EngineBoardCore(CONFIG, clk_freq=CLK, baud=BAUD, activity_cycles=64)
    wave = uart_wave(b"".join(encode_packet(p) for p in requests), rng)
    decoder, peer, packets, seen = PacketDecoder(), LinePeer(), [], [0]

    async def host_sends(ctx):
        for level in wave:
            ctx.set(dut.rx, level)
            await ctx.tick()

    async def host_listens(ctx):
        for _ in range(len(wave) + 200 * 10 * R):
            _, _, tx, status = await ctx.tick().sample(dut.tx, dut.status)
            seen[0] |= status
            before = len(peer.bytes)
            peer.sample(tx)
            if len(peer.bytes) > before:
                packets.extend(decoder.feed(bytes(peer.bytes[before:])))
                if len(packets) == responses_expected:
                    return

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(host_sends, background=True)
    sim.add_testbench(host_listens)
    sim.run()
    assert peer.faults == []
    return packets, {name: bool(seen[0] >> i & 1) for i, name in enumerate(STATUS_BITS)}


def test_ident_labels_and_a_bad_command_over_the_serial_pins():
    rng = random.Random(seed_for("board-core"))
    labels = [rng.randrange(10) for _ in range(CONFIG.label_words)]
    requests = [
        [header(Command.IDENT, 0, tag=7)],
        [header(Command.WRITE, Target.LABELS, tag=8), 0, len(labels), *labels],
        [header(0x55, 0, tag=9)],                                             # no such command
        [header(Command.READ, Target.LABELS, tag=10), 0, len(labels)],
    ]
    packets, status = exchange(requests, rng, responses_expected=4)
    ident, write, bad, read = packets
    assert ident[0] == header(Command.IDENT, Status.OK, tag=7)
    assert dict(zip(IDENT, ident[1:])) == ident_values(CONFIG)
    assert write == [header(Command.WRITE, Status.OK, tag=8)]
    assert bad == [header(0x55, Status.BAD_COMMAND, tag=9)]
    assert read == [header(Command.READ, Status.OK, tag=10), *labels]
    assert status["ready"] and status["rx_active"] and status["tx_active"] and not status["link_error"]
