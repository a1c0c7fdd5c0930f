# saltx — every setup step lives here; `make demo` and `make test` install on their own.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
EXPERIMENT ?= gn2_mup
DEMO_DIR ?= demo_data
DEMO_RUN ?= demo_runs/demo
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 1

.PHONY: install test lint demo fixtures bench bench-peer bench-physics mup-shapes clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-pin.txt
	$(PIP) install -q -c $(VENV)/torch-pin.txt -c constraints.txt -e ".[dev]"
	$(PIP) install -q -c $(VENV)/torch-pin.txt -c constraints.txt --no-deps "mup==1.0.0"
	$(PY) -c "import torch, mup, saltx; print('installed saltx with torch', torch.__version__)"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

fixtures: install
	$(PY) -m saltx.data.synthetic --out $(DEMO_DIR) --n-jets 60000 --seed 1

demo: install
	bash scripts/demo.sh $(DEMO_DIR) $(DEMO_RUN)

bench: install
	$(PY) scripts/bench.py

bench-peer: install
	$(PY) scripts/bench.py --peer

# learning quality vs salt-ml 0.13 (installs salt-ml with the kit's setup.sh if missing);
# BENCH_PHYSICS_ARGS=--quick for a plumbing check
bench-physics: install
	$(PY) scripts/bench_physics.py $(BENCH_PHYSICS_ARGS)

mup-shapes: install
	$(PY) -m saltx.mup.shapes +experiment=$(EXPERIMENT)

clean:
	rm -rf $(DEMO_DIR) demo_runs outputs multirun
