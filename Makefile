# One command each: `make setup` (fresh machine), `make test`, `make train`, `make trace`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup test train trace bench-speed bench-accuracy clean

setup: $(VENV)/.installed fashion-mnist

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's full Fashion-MNIST, where apt exists and we are root; otherwise the embedded subset serves.
fashion-mnist:
	@if [ -d $(FASHION_MNIST) ]; then echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  && echo "Fashion-MNIST installed in $(FASHION_MNIST)"; \
	else echo "Fashion-MNIST: not installed (no apt or not root); the embedded subset will be used"; fi

test: $(VENV)/.installed
	$(PY) -m pytest -q

train: $(VENV)/.installed
	$(PY) -m golden.train --net lenet5 --dataset embedded --epochs 3 --out runs/lenet5

trace: $(VENV)/.installed
	$(PY) -m golden.trace --net mlp --steps 4 --seed 1 --out runs/mlp-trace.npz

# cocotb + Verilator benches (sim/test_sim_*.py); builds cached in sim_build/. `WAVES=1 make sim` traces.
.PHONY: sim
sim: $(VENV)/.installed
	$(PY) -m pytest -v sim

bench-speed: $(VENV)/.installed
	$(PY) benchmarks/golden_speed.py

bench-accuracy: $(VENV)/.installed
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf runs .pytest_cache build *.egg-info
