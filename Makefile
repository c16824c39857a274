# `make demo`, `make test` (ruff + the quick tests, a few minutes on 2 CPU cores) and `make test-all` (ruff + every
# test: parity with Meta, DDP/FSDP, kill-and-resume, compile, longer fits). Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1
TORCHVISION := torchvision==0.29.1
SAM2 := sam2==1.1.0
DEMO_DATA := data/demo
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH) $(TORCHVISION)
	# sam2 after torch, without build isolation and without its declared deps, so torch is never swapped;
	# its real dependencies come from our pyproject.
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps $(SAM2)
	$(BIN)/pip install -q -e ".[dev]" $(TORCH) $(TORCHVISION)
	touch $(STAMP)

$(DEMO_DATA): | $(STAMP)
	$(BIN)/sam2train demo-data $(DEMO_DATA)

demo: $(STAMP) $(DEMO_DATA)
	$(BIN)/sam2train fit --config configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-all: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/dataloader.py

clean:
	rm -rf $(VENV) runs data/demo
