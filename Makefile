# zflight: `make train` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXP    ?=
DATA   ?=
GPUS   ?=
ARGS   ?=
CKPT   ?=

TRAIN_ARGS := $(if $(EXP),experiment=$(EXP)) $(if $(DATA),data.root=$(DATA)) \
              $(if $(GPUS),trainer.accelerator=gpu trainer.devices=$(GPUS)) $(ARGS)

.PHONY: help install train visualize test test-fast lint format clean ablation rehearse

help:  ## show this help
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXP=imagenet DATA=/path GPUS=4 CKPT=runs/.../last.ckpt ARGS=\"trainer.max_epochs=20 logger=csv\""

install: $(STAMP)  ## create .venv and install zflight with its dev tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)  ## train ZFNet (defaults: shapes data, CPU or all GPUs, W&B offline without a key)
	$(PY) -m zflight.train $(TRAIN_ARGS)

visualize: $(STAMP)  ## visual callbacks on CKPT=runs/.../last.ckpt, into a new folder beside the run
	@test -n "$(CKPT)" || { echo "usage: make visualize CKPT=runs/<run>/checkpoints/last.ckpt [ARGS=\"out=DIR ...\"]" >&2; exit 2; }
	$(PY) -m zflight.visualize ckpt=$(CKPT) $(ARGS)

ablation: $(STAMP)  ## AlexNet-style vs ZFNet first layers: SGD, same conv1 start and RMS rule, 5 seeds; claims with p-values
	$(PY) -m zflight.ablation $(ARGS)

rehearse: $(STAMP)  ## the ImageNet recipe on a small written folder, 2 CPU processes, every analysis; prints the costs
	$(PY) -m zflight.rehearse $(ARGS)

test: $(STAMP)  ## run the whole test suite
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff check and format check
	$(VENV)/bin/ruff check zflight tests benchmarks
	$(VENV)/bin/ruff format --check zflight tests benchmarks

format: $(STAMP)  ## apply ruff formatting and fixes
	$(VENV)/bin/ruff check --fix zflight tests benchmarks
	$(VENV)/bin/ruff format zflight tests benchmarks

clean:  ## remove the environment and run outputs
	rm -rf $(VENV) runs .pytest_cache
