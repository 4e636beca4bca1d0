"""boards.top: the engine behind the serial host link, driven bit by bit on its UART pins.

The board core (link + engine, no PLL; with external words also the SDRAM controller and the chip
model) is simulated with a Python UART peer at 8 clocks per bit that speaks the reliable link
protocol (:class:`tests.test_boards_hostlink.UartLinkPeer`: a :class:`boards.link_host.LinkEndpoint`
clocked by the simulation's cycle count): IDENT must come back with the engine's identity, labels
written through the link must read back, and a bad command must get its error response with the
link still serving.
"""

import random

import pytest
from amaranth.sim import Simulator

from boards.link import suggested_timeout_cycles
from boards.board_system import BoardSDRAMSystem
from boards.top import SDRAM_READ_DELAY, STATUS_BITS, EngineBoardCore
from hw.engine.driver import decode_items, encode_items
from hw.engine.protocol import IDENT, Command, Status, Target, header, ident_values, item_bits
from tests.support import add_domain_clocks, seed_for
from tests.test_boards_hostlink import BAUD, CLK, UartLinkPeer
from tests.test_hw_engine import CONFIG


def exchange(requests, rng, *, dut=None, watch=(), max_cycles=200_000):
    """Open the link (RESET) from a Python peer on the board core's UART pins and send
    ``requests`` (packets of words); return the responses and the status bits seen (OR over the
    run), with the last values of the ``watch`` signals."""
    dut = dut or EngineBoardCore(CONFIG, clk_freq=CLK, baud=BAUD, activity_cycles=64)
    peer = UartLinkPeer(rng, timeout=suggested_timeout_cycles(CLK, BAUD))
    watched, packets, seen = {}, [], [0]

    async def host(ctx):
        peer.endpoint.connect()
        sent, level, cycles = False, 1, 0
        while len(packets) < len(requests):
            assert cycles < max_cycles, f"{len(packets)} of {len(requests)} responses after {cycles} cycles"
            if not sent and not peer.endpoint.connecting:
                for p in requests:
                    peer.endpoint.send(p)
                sent = True
            if peer.level != level:
                level = peer.level
                ctx.set(dut.rx, level)
            _, _, tx, status, *values = await ctx.tick().sample(dut.tx, dut.status, *watch)
            cycles += 1
            seen[0] |= status
            watched.update(zip((s.name for s in watch), values))
            peer.clock(tx)
            while peer.packets:
                packets.append(peer.packets.popleft())

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    add_domain_clocks(sim, dut, 1 / CLK)
    sim.add_testbench(host)
    sim.run()
    assert peer.line.faults == []
    assert peer.stats.retransmissions == peer.stats.crc_errors == peer.stats.timeouts == 0
    return packets, {**{name: bool(seen[0] >> i & 1) for i, name in enumerate(STATUS_BITS)}, **watched}


def test_ident_labels_and_a_bad_command_over_the_serial_pins():
    rng = random.Random(seed_for("board-core"))
    labels = [rng.randrange(10) for _ in range(CONFIG.label_words)]
    requests = [
        [header(Command.IDENT, 0, tag=7)],
        [header(Command.WRITE, Target.LABELS, tag=8), 0, len(labels), *labels],
        [header(0x55, 0, tag=9)],                                             # no such command
        [header(Command.READ, Target.LABELS, tag=10), 0, len(labels)],
    ]
    packets, status = exchange(requests, rng)
    ident, write, bad, read = packets
    assert ident[0] == header(Command.IDENT, Status.OK, tag=7)
    assert dict(zip(IDENT, ident[1:])) == ident_values(CONFIG)
    assert write == [header(Command.WRITE, Status.OK, tag=8)]
    assert bad == [header(0x55, Status.BAD_COMMAND, tag=9)]
    assert read == [header(Command.READ, Status.OK, tag=10), *labels]
    assert status["ready"] and status["rx_active"] and status["tx_active"]
    assert not status["link_error"] and not status["link_retry"]


# -- the external memory on SDRAM -----------------------------------------------------------------

EXT_CONFIG = CONFIG.replace(external_words=64)


@pytest.mark.parametrize("read_delay, sdram_clock", [(SDRAM_READ_DELAY, 1), (SDRAM_READ_DELAY - 1, 1),
                                                     (SDRAM_READ_DELAY, 2.25)])
def test_external_words_live_in_the_sdram(read_delay, sdram_clock):
    """ACT items written through the serial pins to external addresses (≥ data_words) land in the
    SDRAM model and read back; with the wrong read delay the readback differs (the check can fail).
    Also with the SDRAM on a clock of its own, 2.25 times the engine's (the board top's
    ``sdram_mhz``): the core's controller behind the port's clock crossing."""
    rng = random.Random(seed_for(f"board-sdram-{read_delay}-{sdram_clock}"))
    bits = item_bits(Target.ACT, EXT_CONFIG.lanes, EXT_CONFIG.wage.kG)
    items = [rng.getrandbits(bits) for _ in range(12)] + [0, (1 << bits) - 1]
    address = EXT_CONFIG.data_words + 5                              # external words 5 … 18
    requests = [
        [header(Command.WRITE, Target.ACT, tag=1), address, len(items), *encode_items(items, bits)],
        [header(Command.READ, Target.ACT, tag=2), address, len(items)],
    ]
    dut = BoardSDRAMSystem(EXT_CONFIG, clk_freq=CLK, baud=BAUD, activity_cycles=64, sdram_read_delay=read_delay,
                           sdram_clk_freq=None if sdram_clock == 1 else sdram_clock * CLK)
    assert dut.domain_freqs == ({"sync": CLK} if sdram_clock == 1 else {"sync": CLK, "sdram": sdram_clock * CLK})
    packets, status = exchange(requests, rng, dut=dut,
                               watch=(dut.model.violation, dut.core.sdram.read_words))
    write, read = packets
    assert write == [header(Command.WRITE, Status.OK, tag=1)]
    assert read[0] == header(Command.READ, Status.OK, tag=2)
    assert status["violation"] == 0 and status["read_words"] == len(items)
    got = decode_items(read[1:], bits)
    if read_delay == SDRAM_READ_DELAY:
        assert got == items
    else:
        assert got != items


def test_a_board_without_sdram_refuses_external_words():
    with pytest.raises(ValueError, match=r"external_words=64, external_weight_words=0: this board has no SDR SDRAM"):
        EngineBoardCore(EXT_CONFIG, clk_freq=CLK, baud=BAUD)
