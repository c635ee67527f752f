# The README's commands. `make ablation` and `make test` work on a fresh clone: they
# create .venv and install the pinned dependencies when missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Corpora: $STUDY_DATA_DIR if set, else ../shared/data when it exists, else the
# harness looks in data/ and then downloads (see study/data.py).
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/warpeace_input.txt),)
export STUDY_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: ablation smoke karpathy ngram test test-all lint bench ui clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m study.engine.fused  # build the fused step kernels (the torch code is the fallback)
	touch $@

ablation: $(STAMP)  ## the variant ablation on War and Peace and Linux (CPU-sized)
	$(BIN)/python -m study.run configs/ablation.yaml $(ARGS)

smoke: $(STAMP)  ## every stage on tiny text, in seconds
	$(BIN)/python -m study.run configs/smoke.yaml $(ARGS)

karpathy: $(STAMP)  ## Karpathy15's Table 1 setup (for a GPU)
	$(BIN)/python -m study.run configs/karpathy2015.yaml $(ARGS)

ngram: $(STAMP)  ## Karpathy15's n-gram baselines (orders 1..20) on both corpora, logged beside the ablation
	$(BIN)/python -m study.ngram configs/ablation.yaml $(ARGS)

test: $(STAMP)  ## the fast test suite (what CI runs)
	$(BIN)/python -m pytest $(ARGS)

test-all: $(STAMP)  ## every test, slow ones included
	$(BIN)/python -m pytest -m "" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)  ## throughput and memory of every cell against nn.LSTM / nn.GRU
	$(BIN)/python -m study.bench $(ARGS)

ui: $(STAMP)  ## browse the runs: prints each experiment's link (http://127.0.0.2:5000/...)
	$(BIN)/python -m study.ui $(ARGS)
