"""cocotb 2 + Verilator simulation of the Amaranth hardware (see ``hw/CONVENTIONS.md``).

* :mod:`sim.runner` -- ``run_cocotb(component, name=..., test_module=..., parameters=...)``: Verilog,
  generated clock/reset harness, cached Verilator build in ``sim_build/``, cocotb run from pytest.
* :mod:`sim.streams` -- testbench side: ``StreamSource``/``StreamSink`` for ``amaranth.lib.stream``
  interfaces, ``Scoreboard``, ``pack_lanes``/``unpack_lanes``, ``sim_params``, ``reset_dut``.
* ``sim/tb_<unit>.py`` -- cocotb benches; ``sim/test_sim_<unit>.py`` -- their pytest entry points
  (``make sim``; ``WAVES=1 make sim`` for traces).

Nothing is imported here: the simulator process imports ``sim.streams`` without Amaranth.
"""
