"""Train on the board, one step at a time, every weight checked bit for bit against the golden model.

::

    python -m boards.train --port /dev/ttyUSB0 --net mlp --steps 20
    python -m boards.train --port /dev/ttyUSB0 --steps 5 --board ulx3s --variant 45F --baud 3000000
    python -m boards.train --port /dev/ttyUSB0 --steps 5 --memory sdram
    python -m boards.train --port COM4 --steps 3 --config my_engine.json --seed 1

The engine configuration must be the one the bitstream was built from: the board variant's default
(``--board``/``--variant``; ``--memory bram``, the default, the all-on-chip engine of
:data:`boards.catalog.VARIANT_ENGINES`, or ``--memory sdram``, the SDRAM engine of
:data:`boards.catalog.SDRAM_ENGINES` that ``python -m hw.build --memory sdram`` builds) or ``--config FILE`` (an
:class:`~hw.engine.config.EngineConfig` as JSON, as ``python -m hw.build --config`` takes it), with
``target="ecp5"`` as :func:`hw.build.resolve_config` sets it; ``--seed`` replaces the WAGE seed,
``--net`` only checks that the configuration trains that network. The program is compiled from it
(:func:`hw.engine.compiler.compile_network`) and the serial port opened with the reliable link
(:class:`boards.link_host.SerialTransport`, RESET handshake). Then, through
:class:`hw.engine.driver.EngineDriver`:

1. IDENT: the board's engine must have been built from this configuration (magic, sizes and the
   configuration's fingerprint; otherwise :class:`~hw.engine.driver.EngineMismatch` names the
   difference), then the program is loaded;
2. the initial weights (:func:`golden.model.init_weights`) are written and read back: a difference
   stops the run before any step (exit 3, :class:`LoadMismatch`), since then the board's memory does
   not return what it was given (for an SDRAM engine most likely the read capture, which has not
   been measured on a board: rebuild with ``python -m hw.build --sdram-read-delay 1`` or ``3``);
3. per step ``s``: batch ``s`` of the embedded Fashion-MNIST subset (images ``s·B … (s+1)·B − 1``,
   as the Verilator MLP test ``sim/test_sim_engine.py`` and :func:`golden.trace.embedded_trace`
   use them) is written, one RUN at log2 η of the schedule's epoch 0, every weight read back and
   compared with :func:`golden.model.train_step`'s.

Each step prints its time, the words exchanged, the link's payload throughput and retransmissions
(:attr:`SerialTransport.stats <boards.link_host.SerialTransport.stats>`), and ``OK`` or the first
divergence (layer, weight index, got and want); the run stops at the first divergence.

Exit status: 0 every step matched; 1 a step diverged; 2 a bad argument (an unknown board or
variant, ``--memory sdram`` for a board or part without an SDRAM engine, ``--memory`` with
``--config``, an unreadable configuration, a network the configuration does not train, too many steps
for the data set, a serial port that does not exist); 3 the board could not be driven (no answer
on the link, an engine built from another configuration, an error status from the engine, weights that read back
wrong before any step).

The step loop, :func:`train_and_check`, takes any transport with ``async exchange(words) ->
words`` (``tests/test_boards_train.py`` runs it against the simulated gateware).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Divergence", "StepResult", "LoadMismatch", "first_divergence", "train_and_check", "board_config", "main"]


@dataclass(frozen=True)
class Divergence:
    """The first weight (in layer order, then C order) that differs from golden."""
    layer: int
    index: tuple[int, ...]
    got: int
    want: int
    differing: int          # weights of this layer that differ
    size: int               # weights of this layer

    def __str__(self):
        return (f"layer {self.layer} weight {list(self.index)}: got {self.got}, want {self.want} "
                f"({self.differing} of the layer's {self.size} weights differ)")


@dataclass(frozen=True)
class StepResult:
    step: int
    seconds: float            # batch, RUN and read-back on the board (golden not included)
    words: int                # 32-bit words exchanged both ways in this step (requests + responses)
    engine_cycles: int        # what the RUN reported
    link: dict | None         # per-step link figures, when the transport has ``stats``
    divergence: Divergence | None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def line(self) -> str:
        text = f"step {self.step:4d}  {self.seconds:8.3f} s  {self.words:7d} words  {self.engine_cycles:9d} cycles"
        if self.link is not None:
            text += (f"  link {_rate(self.link['throughput_bytes_per_s'])}, "
                     f"{self.link['retransmissions']} retransmitted, {self.link['crc_errors']} CRC errors")
        return text + ("  OK" if self.ok else f"  DIVERGED: {self.divergence}")


class LoadMismatch(RuntimeError):
    """The weights read back right after loading differ from those written (``divergence``, the first
    difference): the board's memory path is wrong, not the training, so no step is run."""

    def __init__(self, divergence: Divergence, external_weights: bool):
        self.divergence, self.external_weights = divergence, external_weights
        hint = ("the engine keeps weights in the SDRAM, so the likeliest cause is the SDRAM read capture (not "
                "measured on a board): rebuild with python -m hw.build ... --sdram-read-delay 1, or 3 (default 2)"
                if external_weights else
                "the engine keeps every weight on chip, so the bitstream, or its configuration, is not this one")
        super().__init__(f"the weights read back right after loading differ from those written, before any "
                         f"step: {divergence}; {hint}")


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1000:7.1f} kB/s" if bytes_per_s >= 1000 else f"{bytes_per_s:7.1f} B/s"


def first_divergence(got: list[np.ndarray], want: list[np.ndarray]) -> Divergence | None:
    """The first differing weight of ``got`` against ``want`` (lists of per-layer arrays), or None."""
    if len(got) != len(want):
        raise ValueError(f"{len(got)} layers read back, {len(want)} expected")
    for layer, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise ValueError(f"layer {layer}: weights of shape {g.shape} read back, {w.shape} expected")
        diff = np.argwhere(g != w)
        if len(diff):
            index = tuple(int(i) for i in diff[0])
            return Divergence(layer, index, int(g[index]), int(w[index]), len(diff), int(w.size))
    return None


class _Counting:
    """Counts the words of every exchange through ``transport``."""

    def __init__(self, transport):
        self.transport = transport
        self.words = 0

    async def exchange(self, words: list[int]) -> list[int]:
        reply = await self.transport.exchange(words)
        self.words += len(words) + len(reply)
        return reply


_LINK_FIELDS = ("payload_bytes_tx", "payload_bytes_rx", "retransmissions", "crc_errors", "timeouts", "seconds")


def _link_stats(transport) -> dict | None:
    stats = getattr(transport, "stats", None)
    if not isinstance(stats, dict) or not all(k in stats for k in _LINK_FIELDS):
        return None
    return {k: stats[k] for k in _LINK_FIELDS}


def _link_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    d = {k: after[k] - before[k] for k in _LINK_FIELDS}
    payload = d["payload_bytes_tx"] + d["payload_bytes_rx"]
    d["throughput_bytes_per_s"] = payload / d["seconds"] if d["seconds"] > 0 else 0.0
    return d


async def train_and_check(transport, program, images: np.ndarray, labels: np.ndarray, steps: int, *,
                          eta_log2: int | None = None, report: Callable[[StepResult], None] | None = None
                          ) -> list[StepResult]:
    """Train ``steps`` steps of ``program`` through ``transport`` (any object with ``async
    exchange(words) -> words``), checking every weight against golden after every step.

    Checks IDENT and loads the program (:meth:`~hw.engine.driver.EngineDriver.load_program`, which
    raises :class:`~hw.engine.driver.EngineMismatch`), loads :func:`golden.model.init_weights` and
    reads them back (a difference raises :class:`LoadMismatch`), then
    step ``s`` trains on ``images[s·B:(s+1)·B]`` with log2 η ``eta_log2`` (default the schedule's
    epoch 0). ``report`` is called with each :class:`StepResult`; the loop stops after the first
    step that diverges (its result is the last one returned)."""
    from golden import model as golden
    from hw.engine.driver import EngineDriver

    wage = program.config.wage
    b = wage.batch_size
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a positive integer")
    if len(images) < steps * b or len(labels) < steps * b:
        raise ValueError(f"steps={steps}: {steps} steps of batch {b} need {steps * b} images, "
                         f"{min(len(images), len(labels))} given")
    eta = wage.eta_log2(0) if eta_log2 is None else eta_log2
    counting = _Counting(transport)
    driver = EngineDriver(program, counting)
    await driver.load_program()
    want = golden.init_weights(wage)
    await driver.load_weights(want)
    loaded = first_divergence(await driver.read_weights(), want)
    if loaded is not None:
        raise LoadMismatch(loaded, external_weights=program.config.external_weight_words > 0)
    results = []
    for s in range(steps):
        x, y = images[s * b:(s + 1) * b], labels[s * b:(s + 1) * b]
        want, _ = golden.train_step(wage, want, x, y, s, eta)
        words, link, t0 = counting.words, _link_stats(transport), time.monotonic()
        await driver.load_batch(x, y)
        cycles = await driver.run(s, 1, eta)
        got = await driver.read_weights()
        result = StepResult(step=s, seconds=time.monotonic() - t0, words=counting.words - words, engine_cycles=cycles,
                            link=_link_delta(link, _link_stats(transport)), divergence=first_divergence(got, want))
        results.append(result)
        if report is not None:
            report(result)
        if not result.ok:
            break
    return results


def board_config(board: str = "ulx3s", variant: str | None = None, config_path: str | Path | None = None,
                 seed: int | None = None, memory: str = "bram"):
    """The :class:`~hw.engine.config.EngineConfig` a bitstream of ``python -m hw.build --board BOARD
    [--variant V] [--memory M | --config FILE]`` was built from, with the WAGE ``seed`` replaced if
    given. Without ``config_path``, ``memory`` picks the variant's default ("bram" or "sdram",
    :meth:`boards.catalog.Board.default_config`); with it, ``memory`` must stay "bram".
    Raises :class:`~boards.catalog.BoardError`, :class:`~hw.engine.config.EngineConfigError` or
    :class:`hw.build.BuildError` naming what is wrong."""
    from boards.catalog import get_board
    from hw.build import resolve_config
    from hw.engine.config import EngineConfig, EngineConfigError

    b = get_board(board)
    variant = b.check_variant(variant)
    if config_path is not None and memory != "bram":
        raise EngineConfigError(f"memory={memory!r} and config {config_path}: give one (the configuration file "
                                f"sets its own memories: external_words)")
    config = EngineConfig.load(config_path) if config_path is not None else b.default_config(variant, memory)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise EngineConfigError(f"seed={seed!r}: must be a non-negative integer")
        config = config.replace(wage=config.wage.replace(seed=seed))
    return resolve_config(b, variant, config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m boards.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", required=True, help="the board's serial port (e.g. /dev/ttyUSB0, COM4)")
    ap.add_argument("--steps", type=int, required=True, help="training steps (one batch each)")
    ap.add_argument("--net", help="the network the configuration must train (a check; default: whatever it trains)")
    ap.add_argument("--baud", type=int, default=3_000_000, help="serial rate the bitstream was built for (default 3000000)")
    ap.add_argument("--seed", type=int, help="WAGE seed the bitstream was built with (default: the configuration's)")
    ap.add_argument("--board", default="ulx3s", help="board (default ulx3s)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--variant", help="FPGA size: its default engine (default: the board's default variant)")
    which.add_argument("--config", type=Path, help="engine configuration JSON the bitstream was built from")
    ap.add_argument("--memory", choices=("bram", "sdram"),
                    help="which default engine the bitstream is (as python -m hw.build --memory): bram (default, "
                         "all on chip) or sdram (big tensors in the board's SDRAM); not with --config")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:                     # argparse: 2 after printing the usage error, 0 for --help
        return e.code if isinstance(e.code, int) else 2

    from boards.catalog import BoardError, get_board
    from boards.link_host import LinkTimeout, SerialPortNotFound, SerialTransport
    from golden.config import ConfigError
    from golden.data import DataError, load_dataset
    from hw.build import BuildError
    from hw.engine.compiler import FitError, UnsupportedNetwork, compile_network
    from hw.engine.config import EngineConfigError
    from hw.engine.driver import EngineError, EngineMismatch

    def fail(message: str, code: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    try:
        if args.steps < 1:
            raise ValueError(f"--steps {args.steps}: must be at least 1")
        if args.baud < 1:
            raise ValueError(f"--baud {args.baud}: must be a positive integer")
        if args.memory is not None and args.config is not None:
            raise ValueError(f"--memory {args.memory} and --config {args.config}: give one (--memory picks the "
                             f"variant's default engine; a configuration file sets its own memories)")
        memory = args.memory or "bram"
        config = board_config(args.board, args.variant, args.config, args.seed, memory=memory)
        if args.config:
            source = f"--config {args.config}"
        else:
            board = get_board(args.board)
            source = (f"the {board.name} {board.check_variant(args.variant)} default"
                      f"{' SDRAM engine' if memory == 'sdram' else ''}")
        if args.net is not None and args.net != config.wage.net:
            raise ValueError(f"--net {args.net}: the engine configuration ({source}) trains {config.wage.net!r}; "
                             f"pass the --config the bitstream was built from")
        program = compile_network(config)
        data = load_dataset("embedded")
        b = config.wage.batch_size
        if args.steps * b > len(data.train_images):
            raise ValueError(f"--steps {args.steps}: {args.steps} batches of {b} need {args.steps * b} images, the "
                             f"embedded data set has {len(data.train_images)} (at most {len(data.train_images) // b} steps)")
    except (BoardError, EngineConfigError, BuildError, FitError, UnsupportedNetwork, ConfigError, DataError,
            ValueError) as e:
        return fail(str(e), 2)

    print(f"{config.summary()}\n  fingerprint {config.fingerprint():#010x}; {len(program.instructions)} instructions; "
          f"{args.steps} steps of batch {b} on the embedded data set", flush=True)
    try:
        transport = SerialTransport(args.port, args.baud)
    except (SerialPortNotFound, ModuleNotFoundError) as e:
        return fail(str(e), 2)
    except LinkTimeout as e:
        return fail(f"{args.port}: {e}", 3)

    def report(result: StepResult) -> None:
        print(result.line(), flush=True)

    with transport:
        try:
            results = asyncio.run(train_and_check(transport, program, data.train_images, data.train_labels,
                                                  args.steps, report=report))
        except EngineMismatch as e:
            return fail(f"the board on {args.port} does not run this build: {e}", 3)
        except LoadMismatch as e:
            return fail(f"{args.port}: {e}", 3)
        except (EngineError, LinkTimeout) as e:
            return fail(f"{args.port}: {e}", 3)
        except KeyboardInterrupt:
            return fail("interrupted", 130)
        st = transport.stats
    last = results[-1]
    link = (f"link: {st['payload_bytes_tx'] + st['payload_bytes_rx']} payload bytes in {st['seconds']:.2f} s "
            f"({_rate(st['throughput_bytes_per_s']).strip()}), {st['retransmissions']} retransmissions, "
            f"{st['timeouts']} timeouts")
    if not last.ok:
        print(f"step {last.step} diverged from golden: {last.divergence}\n{link}")
        return 1
    print(f"{len(results)} steps: every weight equal to golden after every step\n{link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
