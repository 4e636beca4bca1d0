"""The WAGE training engine: the three hardware units joined into a trainer (issue 4).

Layers of the package (gateware, host interface and driver kept apart):

* :mod:`hw.engine.config` — :class:`EngineConfig`, the one frozen configuration everything reads;
* :mod:`hw.engine.layout` — where tensors live: channels-last words of L lanes, weight rows;
* :mod:`hw.engine.isa` — descriptor instructions of fully connected layers (one per layer operation);
* :mod:`hw.engine.conv` — convolution and 2×2 max-pool: odometer patterns, compiler, word-level model;
* :mod:`hw.engine.compiler` — network → memory map, fit check, one training step's program;
* :mod:`hw.engine.encoding` — both instruction kinds as the records the program memory holds;
* :mod:`hw.engine.model` — word-level model of the engine's dataflow (checked against golden);
* :mod:`hw.engine.addrgen`, :mod:`hw.engine.conv_addrgen`, :mod:`hw.engine.slot` — address
  generators for plain and convolution patterns, and the slot that walks either;
* :mod:`hw.engine.feeder` — the readers that turn patterns into array operands (through
  :class:`hw.transpose.StreamTransposer` where needed);
* :mod:`hw.engine.pool`, :mod:`hw.engine.unpool` — the pool and unpool stages of the result path;
* :mod:`hw.engine.engine` — the RTL top: memories, units, sequencer, host port;
* :mod:`hw.engine.protocol`, :mod:`hw.engine.driver` — the host packet format and the async driver.

Dataflow of one step (L×L int8 array, L-lane quantiser, weight store of L-weight words):

* activations (with their ReLU and saturation mask bits) live in the activation scratchpad, errors
  in the error scratchpad, both block RAM with output registers, words of L channels;
* forward and error products take one operand through an L×L transposer (L words, one per array
  row, become L array beats); the gradient product takes both operands directly;
* results stream from the array into the quantiser and back into a scratchpad (Q_A, Q_E) or into
  the weight store's update port (Q_G); Q_E and Q_G compute their product twice (the first pass
  finds the maximum) instead of storing 32-bit sums.
"""
