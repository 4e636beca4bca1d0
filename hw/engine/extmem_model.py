"""A simulation model of an external memory (SDRAM behind its controller) on the engine's port.

:class:`ExternalMemoryModel` answers an :class:`hw.engine.extmem.ExternalMemorySignature` port
(its ``port`` member is the memory side, ``In(signature)``). It is written to be simulated (the
Amaranth simulator, or Verilator through :mod:`sim.runner`), not synthesised for an FPGA: it
stands for a memory outside the chip with three knobs for its timing.

Structure
---------
::

    cmd ─▶ command FIFO (2) ─▶ current command ─┬─ read:  array ─▶ read queue ──▶ r
                                                │          (data fetched at issue, visible
    w ───▶ write buffer (max_burst words) ──────┴─ write: ─▶ array       `latency` cycles later)

* **Commands** are processed strictly in order, one at a time. A two-entry command FIFO lets the
  next command be loaded in the cycle the current one moves its last word, so back-to-back bursts
  leave no bubble on the data bus.
* **The data bus** moves one word every ``cycles_per_word`` cycles, reads and writes alike. Each
  command is charged ``command_cycles`` dead cycles before its first word (row activation and the
  like); they add to the bus spacing, so a stream of bursts of ``count`` words takes
  ``command_cycles + count * cycles_per_word`` cycles per command in the steady state.
* **Reads.** A read word is *issued* in a cycle the bus is free: it is read from the array at once
  (so it reflects every earlier write, which is what makes the port in order) and written into the
  read queue, and it becomes visible on ``r`` exactly ``latency`` cycles later (a shift register of
  valid bits tracks the words in flight; the data waits in the queue, not in a wide delay line).
  The read queue holds ``latency + 4`` words and a word is only issued while the queue has room
  for it (credit = queue depth − words in flight − words waiting), so a low ``r.ready`` never
  loses a word; it only stops issue once the queue is full. With ``r.ready`` high the queue holds
  about ``latency`` words and reads stream at the full bus rate: consecutive bursts overlap with
  the latency rather than waiting for it.
* **Writes** take their ``count`` words from the write buffer, one per bus slot, waiting while it
  is empty. The buffer accepts up to ``max_burst`` words ahead of their command (an initiator may
  send a whole burst's data before the command) and more as the bus drains it; beyond that ``w``
  waits for the command, as the port allows.

Timing, from the cycle ``c`` a command is accepted on ``cmd`` (an idle model, bus free, data and
queue room available): loaded at ``c + 1``, first word moved at ``c + 2 + command_cycles``, later
words every ``cycles_per_word`` cycles; a read word moved at ``t`` is on ``r`` (valid) at
``t + latency``.

Errors
------
A command with ``count == 0`` or ``addr + count > depth`` sets the sticky ``fault`` output. Such a
command is **ignored by the array** but keeps the stream contract, so the initiator does not hang:
a faulting write still takes its ``count`` words from ``w`` (and drops them), a faulting read
still returns ``count`` words (zeros), and both take the usual bus time. No wrap-around.

Statistics (``Out(32)`` free-running counters from reset, wrapping): ``read_words`` and
``write_words`` count words moved on the data bus (issued from / stored into the array),
``commands`` counts commands accepted on ``cmd``, ``busy_cycles`` the cycles in which a command is
loaded (its overhead, its words, and any wait for write data or read-queue room).

Storage and Verilog conversion
------------------------------
The array is :class:`amaranth.lib.memory.Memory` in banks of at most :data:`BANK_WORDS` words,
selected by the high address bits; the Amaranth simulator starts it at zero. Amaranth's RTLIL
backend writes a memory's initial contents out bit by bit, and yosys's handling of a large
``$meminit_v2`` grows about quadratically with the memory. ``amaranth.back.verilog.convert`` of a
2**18 × 192-bit model, measured on the shared 2-core development machine:

* one Memory: RTLIL 151 s in Python (6 GB), then yosys unfinished after 18 minutes (killed;
  wall-clock times with the machine busy, yosys had had 8 CPU minutes);
* 16 banks of 16384 words: RTLIL 87 s, yosys 74 s, and 19 MB of Verilog ``initial`` block;
* the same banks with their initial contents left out (below): RTLIL 0.4 s, yosys 0.8 s, 36 kB of
  Verilog. Verilator builds that in about 20 s and starts the banks at zero like the Amaranth
  simulator (its default ``+verilator+rand+reset+0``; ``+verilator+rand+reset+2`` randomises).

Leaving the contents out: the banks carry the attribute :data:`NO_INIT_ATTRIBUTE`, and importing
this module wraps Amaranth's private RTLIL emitter so a memory with that attribute gets no
``$meminit_v2`` cell (yosys then treats the contents as undefined and writes no ``initial``
block). Every other memory, the model's small FIFOs included, converts as before. Should a
later Amaranth rename the emitter, the wrap is skipped (:data:`RTLIL_INIT_SKIP` is false) and
conversion falls back to the banked path: slow but correct.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.engine.extmem import MAX_BURST, ExternalMemorySignature, command_layout

__all__ = ["ExternalMemoryModel", "BANK_WORDS", "NO_INIT_ATTRIBUTE", "RTLIL_INIT_SKIP"]

#: Words per storage bank (one ``lib.memory.Memory`` each); see "Storage and Verilog conversion".
BANK_WORDS = 16384
#: Read-queue entries beyond ``latency``: slack so a short ``r.ready`` stall does not stop issue.
QUEUE_SLACK = 4
#: Memory attribute marking the storage banks whose (zero) initial contents the RTLIL backend
#: leaves out; see "Storage and Verilog conversion" in the module docstring.
NO_INIT_ATTRIBUTE = "wage_extmem_no_init"


def _install_rtlil_init_skip():
    """Wrap Amaranth's RTLIL emitter so a memory carrying :data:`NO_INIT_ATTRIBUTE` gets no
    ``$meminit_v2`` cell (its contents stay undefined in yosys, so ``write_verilog`` writes no
    ``initial`` block). Every other memory is emitted as before. Idempotent; if the private
    emitter is not found (another Amaranth version), nothing is changed and conversion is merely
    slow."""
    try:
        from amaranth.back import rtlil
        emitter = rtlil.ModuleEmitter
        original = emitter.emit_memory
    except (ImportError, AttributeError):
        return False
    if getattr(original, "skips_marked_init", False):
        return True

    def emit_memory(self, cell_idx, cell):
        if NO_INIT_ATTRIBUTE in getattr(cell, "attributes", {}):
            return
        return original(self, cell_idx, cell)

    emit_memory.skips_marked_init = True
    emitter.emit_memory = emit_memory
    return True


#: Whether the storage banks convert to Verilog without initial contents (see above).
RTLIL_INIT_SKIP = _install_rtlil_init_skip()


def _check_int(name, value, low, high):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name}={value!r}: must be an integer in {low}..{high}")


def _next_index(pointer, depth):
    """``pointer + 1`` modulo ``depth`` (any depth, not only powers of two)."""
    return Mux(pointer == depth - 1, 0, pointer + 1)


class ExternalMemoryModel(wiring.Component):
    """A ``depth`` × ``data_width`` external memory with latency and bandwidth (see the module docstring).

    Parameters
    ----------
    depth : int
        Words of storage (1..2**26).
    data_width : int
        Bits per word (1..4096).
    addr_bits : int or None
        Width of ``cmd.addr`` (1..32); default just enough for ``depth``. Pass the initiator's
        width (it may be wider than needed; the excess addresses fault).
    max_burst : int
        Largest ``cmd.count`` (1..256), as in the initiator's signature.
    latency : int
        Cycles from a read word's issue to the array until it can be valid on ``r`` (1..1024).
    cycles_per_word : int
        The data bus moves one word every this many cycles (1..256), reads and writes alike.
    command_cycles : int
        Dead cycles charged per command before its first word (0..1024).
    bank_words : int
        Words per storage bank (a power of two, 1..2**26); the default :data:`BANK_WORDS` keeps
        Verilog conversion fast. Storage behaviour does not depend on it.
    """

    def __init__(self, depth: int, data_width: int, *, addr_bits: int | None = None,
                 max_burst: int = MAX_BURST, latency: int = 1, cycles_per_word: int = 1,
                 command_cycles: int = 0, bank_words: int = BANK_WORDS):
        try:
            _check_int("depth", depth, 1, 2**26)
            _check_int("data_width", data_width, 1, 4096)
            needed_addr_bits = max(1, (depth - 1).bit_length())
            if addr_bits is None:
                addr_bits = needed_addr_bits
            _check_int("addr_bits", addr_bits, 1, 32)
            if addr_bits < needed_addr_bits:
                raise ValueError(f"addr_bits={addr_bits!r}: too narrow for depth={depth} "
                                 f"(needs at least {needed_addr_bits})")
            _check_int("max_burst", max_burst, 1, 256)
            _check_int("latency", latency, 1, 1024)
            _check_int("cycles_per_word", cycles_per_word, 1, 256)
            _check_int("command_cycles", command_cycles, 0, 1024)
            _check_int("bank_words", bank_words, 1, 2**26)
            if bank_words & (bank_words - 1):
                raise ValueError(f"bank_words={bank_words!r}: must be a power of two")
        except ValueError:
            self._MustUse__silence = True    # a rejected model is not an "unused elaboratable"
            raise
        self.depth, self.data_width, self.addr_bits, self.max_burst = depth, data_width, addr_bits, max_burst
        self.latency, self.cycles_per_word, self.command_cycles = latency, cycles_per_word, command_cycles
        self.bank_words = min(bank_words, 1 << needed_addr_bits)
        self.banks = -(-depth // self.bank_words)
        #: Read-queue entries: the words in flight during ``latency`` plus slack.
        self.read_queue_depth = latency + QUEUE_SLACK
        super().__init__({
            "port": In(ExternalMemorySignature(addr_bits, data_width, max_burst)),
            "fault": Out(1),
            "read_words": Out(32), "write_words": Out(32), "commands": Out(32), "busy_cycles": Out(32),
        })

    def __repr__(self):
        return (f"ExternalMemoryModel(depth={self.depth}, data_width={self.data_width}, "
                f"addr_bits={self.addr_bits}, max_burst={self.max_burst}, latency={self.latency}, "
                f"cycles_per_word={self.cycles_per_word}, command_cycles={self.command_cycles}, "
                f"bank_words={self.bank_words})")

    def elaborate(self, platform):
        m = Module()
        port = self.port
        layout = command_layout(self.addr_bits, self.max_burst)

        # -- command FIFO: two entries so the next command is ready when the current one ends
        m.submodules.command_fifo = command_fifo = SyncFIFO(width=layout.size, depth=2)
        m.d.comb += [command_fifo.w_data.eq(port.cmd.payload), command_fifo.w_en.eq(port.cmd.valid),
                     port.cmd.ready.eq(command_fifo.w_rdy)]
        next_command = layout(command_fifo.r_data)

        # -- write buffer: lets up to max_burst words arrive before their command
        m.submodules.write_buffer = write_buffer = SyncFIFO(width=self.data_width, depth=self.max_burst)
        m.d.comb += [write_buffer.w_data.eq(port.w.payload), write_buffer.w_en.eq(port.w.valid),
                     port.w.ready.eq(write_buffer.w_rdy)]

        # -- the current command
        active = Signal()
        is_write = Signal()
        faulted = Signal()                      # this command is out of range: the array is left alone
        word_addr = Signal(self.addr_bits)
        remaining = Signal(range(self.max_burst + 1))
        # cycles until the bus may move a word (bus spacing plus the command overhead)
        bus_wait = Signal(range(self.command_cycles + self.cycles_per_word))

        # -- read queue: data fetched at issue, visible on r once `latency` cycles have passed
        queue_depth = self.read_queue_depth
        queued = Signal(range(queue_depth + 1))     # in flight + visible: the credit is the rest
        visible = Signal(range(queue_depth + 1))
        queue_head = Signal(range(queue_depth))
        queue_tail = Signal(range(queue_depth))
        queue_has_room = queued < queue_depth

        can_move = active & (remaining != 0) & (bus_wait == 0)
        write_now = Signal()
        read_now = Signal()
        m.d.comb += [write_now.eq(can_move & is_write & write_buffer.r_rdy),
                     read_now.eq(can_move & ~is_write & queue_has_room)]
        moved = write_now | read_now
        done = ~active | (remaining == 0) | (moved & (remaining == 1))
        load = done & command_fifo.r_rdy
        m.d.comb += [write_buffer.r_en.eq(write_now), command_fifo.r_en.eq(load)]

        bus_wait_next = Signal.like(bus_wait)
        with m.If(moved):
            m.d.comb += bus_wait_next.eq(self.cycles_per_word - 1)
        with m.Elif(bus_wait != 0):
            m.d.comb += bus_wait_next.eq(bus_wait - 1)
        with m.If(load):
            # the overhead adds to the bus spacing: command_cycles + count * cycles_per_word per command
            m.d.sync += bus_wait.eq(bus_wait_next + self.command_cycles)
        with m.Else():
            m.d.sync += bus_wait.eq(bus_wait_next)

        with m.If(load):
            end = next_command.addr + next_command.count        # one bit wider than addr: no wrap
            bad = (next_command.count == 0) | (end > self.depth)
            m.d.sync += [active.eq(1), is_write.eq(next_command.write), word_addr.eq(next_command.addr),
                         remaining.eq(next_command.count), faulted.eq(bad)]
            with m.If(bad):
                m.d.sync += self.fault.eq(1)
        with m.Else():
            with m.If(done):
                m.d.sync += active.eq(0)
            with m.If(moved):
                m.d.sync += [word_addr.eq(word_addr + 1), remaining.eq(remaining - 1)]

        # -- the array, in banks of at most bank_words words
        bank_bits = (self.bank_words - 1).bit_length()
        row = word_addr[:bank_bits]
        bank_index = word_addr[bank_bits:]
        array_data = Signal(self.data_width)
        for b in range(self.banks):
            words = min(self.bank_words, self.depth - b * self.bank_words)
            bank = Memory(shape=self.data_width, depth=words, init=[], attrs={NO_INIT_ATTRIBUTE: 1})
            m.submodules[f"bank{b}"] = bank
            write_port = bank.write_port()
            read_port = bank.read_port(domain="comb")
            selected = (bank_index == b) if self.banks > 1 else Const(1)
            m.d.comb += [write_port.addr.eq(row), write_port.data.eq(write_buffer.r_data),
                         write_port.en.eq(write_now & ~faulted & selected),
                         read_port.addr.eq(row)]
            with m.If(selected & ~faulted):
                m.d.comb += array_data.eq(read_port.data)       # a faulting read returns zeros

        read_queue = Memory(shape=self.data_width, depth=queue_depth, init=[])
        m.submodules.read_queue = read_queue
        queue_write = read_queue.write_port()
        queue_read = read_queue.read_port(domain="comb")
        m.d.comb += [queue_write.addr.eq(queue_tail), queue_write.data.eq(array_data),
                     queue_write.en.eq(read_now),
                     queue_read.addr.eq(queue_head), port.r.payload.eq(queue_read.data)]

        # words in flight: a shift register of issue bits; the last one becomes visible next cycle
        if self.latency == 1:
            maturing = read_now
        else:
            in_flight = Signal(self.latency - 1)
            m.d.sync += in_flight.eq(Cat(read_now, in_flight[:-1]))
            maturing = in_flight[-1]
        taken = port.r.valid & port.r.ready
        m.d.comb += port.r.valid.eq(visible != 0)          # a register compare: never waits for ready
        m.d.sync += [visible.eq(visible + maturing - taken), queued.eq(queued + read_now - taken)]
        with m.If(read_now):
            m.d.sync += queue_tail.eq(_next_index(queue_tail, queue_depth))
        with m.If(taken):
            m.d.sync += queue_head.eq(_next_index(queue_head, queue_depth))

        # -- statistics
        m.d.sync += [self.read_words.eq(self.read_words + read_now),
                     self.write_words.eq(self.write_words + write_now),
                     self.commands.eq(self.commands + (port.cmd.valid & port.cmd.ready)),
                     self.busy_cycles.eq(self.busy_cycles + active)]
        return m

