# vitkd_zoo — the two front-door commands are `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
OLAH_VENV := .venv-olah
FMNIST_DIR := /usr/share/datasets/fashion-mnist
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup test quickstart paper-mini lint format benchmark clean fashion-mnist olah

## setup: create .venv with the pinned stack, install vitkd_zoo editable, get Fashion-MNIST (idempotent, fast when nothing changed)
setup: $(STAMP) fashion-mnist

$(STAMP): pyproject.toml requirements-lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements-lock.txt torch torchvision
	$(BIN)/python -m pip install -q -c requirements-lock.txt -e ".[dev]"
	@touch $(STAMP)

# Debian ships the real Fashion-MNIST (MIT). Without root/apt, vitkd_zoo downloads it the normal way on first use.
fashion-mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing dataset-fashion-mnist (Debian)"; \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
		echo "warning: could not install dataset-fashion-mnist; it will be downloaded on first use"; \
	fi

# olah (a self-hosted Hub mirror) lives in its own venv: its pins clash with the main stack. Used by the Hub tests.
olah: $(OLAH_VENV)/bin/olah-cli
$(OLAH_VENV)/bin/olah-cli:
	@test -x $(OLAH_VENV)/bin/python || $(PYTHON) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/python -m pip install -q olah==0.5.4

## test: set up, then run the whole suite offline
test: setup olah
	HF_HUB_OFFLINE=1 VITKD_OLAH_BIN=$(CURDIR)/$(OLAH_VENV)/bin/olah-cli $(BIN)/python -m pytest $(PYTEST_ARGS)

## quickstart: set up, then run the main job
quickstart: setup
	HF_HUB_OFFLINE=1 $(BIN)/vitkd-zoo quickstart $(QUICKSTART_ARGS)

## paper-mini: the full small-scale protocol (all variants x 3 seeds); results go to docs/results/
paper-mini: setup
	HF_HUB_OFFLINE=1 $(BIN)/vitkd-zoo paper-mini --out runs/paper-mini --results-dir docs/results $(PAPER_MINI_ARGS)

lint:
	$(BIN)/ruff check vitkd_zoo training tests benchmarks

format:
	$(BIN)/ruff format vitkd_zoo training tests benchmarks

benchmark: setup
	$(BIN)/python benchmarks/models.py

clean:
	rm -rf $(VENV) $(OLAH_VENV) .pytest_cache
