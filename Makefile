# One command each: `make setup` (fresh machine), `make test`, `make train`, `make trace`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup system-packages test train trace bench-speed bench-accuracy clean

setup: $(VENV)/.installed system-packages

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian packages, where apt exists and we are root: the full Fashion-MNIST (else the embedded subset
# serves) and lz4 headers (Verilator's FST waveforms; without them `WAVES=1` writes VCD).
APT_PACKAGES := dataset-fashion-mnist liblz4-dev
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "Debian packages present: $(APT_PACKAGES)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null \
	  && echo "installed: $$missing"; \
	else echo "not installed (no apt or not root): $$missing — the embedded data set and VCD waveforms serve"; fi

# one pytest worker per core, tests handed out one by one (a module fixture that is a long RTL
# simulation may then run on both workers; --dist loadfile left one worker idle for most of the
# run, and loadgroup does not group with pytest 9.2: pytest-dev/pytest-xdist#1386)
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist load

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
