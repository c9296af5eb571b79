# The two commands of the README:
#   make demo   create .venv, install, and run the main job on the embedded default
#   make test   create .venv, install, and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (torch, ccxt, pandas, ...; a few minutes the first time)"
	$(BIN)/python -m pip install -e '.[dev]' > $(VENV)/pip.log 2>&1 || (tail -40 $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import torch, ccxt, san, bot, strategies, backtest, config"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/cryptorlpm demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m pip install -e '.[dev,bench]' > $(VENV)/pip-bench.log 2>&1 || (tail -40 $(VENV)/pip-bench.log; exit 1)
	for f in tests/benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) var runs .pytest_cache .ruff_cache
