# Two entry points: `make demo` and `make test`. Each creates or updates its own virtualenv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml $(wildcard appliance/*/*.c appliance/*/*/*.c)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# byte-compile now, as a wheel install does: an editable install leaves it to first import,
	@# which PYTHONDONTWRITEBYTECODE (set in some containers) turns into a compile on every run
	$(BIN)/python -m compileall -q appliance >/dev/null
	@touch $(STAMP)

# The demo's deployment secret is public on purpose: real deployments set their own.
demo: $(STAMP)
	APPLIANCE_SECRET=demo-secret-not-for-production $(BIN)/appliance replay pcaps/ --out $(OUT) \
	  --geoip pcaps/geo/demo-geo.csv --requests pcaps/requests.jsonl --accounts pcaps/accounts.jsonl

lint: $(STAMP)
	$(BIN)/ruff check appliance tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python bench/replay_bench.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
