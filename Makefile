# ichseg: the two set-up commands are `make demo` (main job on synthetic data) and `make test`.
# Both create .venv when it is missing. TORCH_SPEC picks the PyTorch build installed first,
# e.g. `make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ichseg-installed
# nnU-Net v2 gets an environment of its own, as it usually has beside a project: the tests
# train it there on CPU. NNUNET_SPEC picks its version.
NNUNET_VENV ?= .venv-nnunet
NNUNET_SPEC ?= nnunetv2>=2.5,<3
NNUNET_STAMP := $(NNUNET_VENV)/.installed
SWEEP ?=
SOURCE ?= local
WANDB_PROJECT ?=
GROUP ?=
DRY_RUN ?=
PROTOCOL ?= paper
DEMO_ARGS ?=
BENCH_ARGS ?=
CURVES_ARGS ?=

export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install nnunet test test-fast lint format demo curves report dashboard bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with torch (TORCH_SPEC, default torch==2.13.0) first, then ichseg and its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

nnunet: $(NNUNET_STAMP) ## create .venv-nnunet with nnU-Net v2 (NNUNET_SPEC) on TORCH_SPEC

# torch is pinned to the build just installed: pip would otherwise upgrade it to suit the newest
# torchvision that nnU-Net's dependencies allow.
$(NNUNET_STAMP):
	$(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(NNUNET_VENV)/bin/python -m pip install --quiet "$(NNUNET_SPEC)" "torch==$$($(NNUNET_VENV)/bin/python \
		-c 'import torch; print(torch.__version__.split("+")[0])')"
	touch $(NNUNET_STAMP)

test: $(STAMP) $(NNUNET_STAMP) ## the full test suite on CPU (about 15 min on 2 cores), real nnU-Net included
	ICHSEG_NNUNET_PYTHON=$(NNUNET_VENV)/bin/python $(PY) -m pytest

test-fast: $(STAMP) ## tests/unit only (in-process, no train.py run or sweep): the loop while developing
	$(PY) -m pytest tests/unit

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP) ## the 20-job unet,dunet x fold 0..9 sweep at demo scale on synthetic data, then the report
	$(PY) train.py -m experiment=demo model=unet,dunet fold=0..9 $(DEMO_ARGS)
	$(MAKE) --no-print-directory report

curves: $(STAMP) ## learning curves at the paper's widths and lr on a CPU-sized synthetic set (about 30 min on 2 cores)
	$(PY) train.py -m experiment=curves model=unet,dunet fold=0 hydra/launcher=local hydra.launcher.n_jobs=2 num_threads=1 $(CURVES_ARGS)
	$(MAKE) --no-print-directory report

report: $(STAMP) ## report of SWEEP=dir (default: latest); SOURCE=wandb WANDB_PROJECT=entity/project GROUP=g
	$(VENV)/bin/ichseg report $(SWEEP) --experiments experiments --protocol $(PROTOCOL) \
		--source $(SOURCE) $(if $(filter wandb,$(SOURCE)),--project "$(WANDB_PROJECT)" --group "$(GROUP)")

dashboard: $(STAMP) ## save the W&B view of SWEEP=dir (default: latest); WANDB_PROJECT=entity/project GROUP=g DRY_RUN=view.json
	$(VENV)/bin/ichseg dashboard $(SWEEP) --experiments experiments $(if $(WANDB_PROJECT),--project "$(WANDB_PROJECT)") \
		$(if $(GROUP),--group "$(GROUP)") $(if $(DRY_RUN),--dry-run "$(DRY_RUN)")

bench: $(STAMP) ## time training (real vs bare vs MONAI loader), epochs, prepare, predict; JSON in experiments/bench
	$(VENV)/bin/ichseg bench $(BENCH_ARGS)

clean: ## remove both venvs, caches and the synthetic data (keeps experiments/)
	rm -rf $(VENV) $(NNUNET_VENV) data .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
