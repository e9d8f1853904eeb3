# Set-up and checks. `make test` works on a fresh clone with only Python 3.11+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt pins the CPU torch wheel; without it pip would fetch CUDA packages.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src/

# The fast lane runs on TEST_WORKERS pytest-xdist processes (each with one torch thread, see
# tests/conftest.py), one test file per process at a time so that module fixtures are built once.
# pytest exits 5 when it collects nothing: a lane that ran no test fails loudly.
TEST_WORKERS ?= 2
unit: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make unit: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The main job: static vs heuristic growth on fashion_mnist_impaired (about 2 minutes on 2 cores).
demo: $(STAMP)
	$(BIN)/esper demo

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/ppo.py
	$(BIN)/python benchmarks/telemetry.py
	$(BIN)/python benchmarks/envs.py
	$(BIN)/python benchmarks/stats.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
