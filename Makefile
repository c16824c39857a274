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

.PHONY: install demo test test-all lint format bench clean gpu-wheels

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

# Everything benchmarks/gpu_suite.py needs on a GPU machine without a package index, in .whl (git-ignored; the
# device tool carries it): sam2 as a pure-Python wheel (no CUDA extension), the packages its image lacks (Meta's
# trainer: hydra-core, omegaconf, antlr4, iopath, tensordict; ours: pycocotools) for CPython 3.12 on x86-64,
# sam2train itself, and with DAVIS=<DAVIS-2016 folder> a 480 px copy of it (about 30 MiB) for the DAVIS section.
WHL := .whl
DAVIS ?= data/davis2016
GPU_PY := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
GPU_PURE := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 iopath==0.1.10 pyvers==0.2.3
GPU_BINARY := tensordict==0.15.3 pycocotools==2.0.11

gpu-wheels: $(STAMP)
	rm -rf $(WHL) && mkdir -p $(WHL)
	SAM2_BUILD_CUDA=0 $(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(WHL) $(SAM2)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(WHL) . $(GPU_PURE)
	rm -rf build  # what setuptools leaves behind building sam2train's wheel in place
	$(BIN)/pip download -q --no-deps --only-binary=:all: $(GPU_PY) -d $(WHL) $(GPU_BINARY)
	if [ -d $(DAVIS)/JPEGImages ]; then $(BIN)/python benchmarks/gpu_suite.py --prepare-davis $(DAVIS) $(WHL)/davis2016; fi
	du -sh $(WHL) && ls $(WHL)

clean:
	rm -rf $(VENV) runs data/demo
