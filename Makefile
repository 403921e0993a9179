# Quickstart: `make demo` runs the main job on simulated instruments; `make test` runs the tests.
# Both set up everything on a fresh machine: a virtualenv in .venv and Mosquitto (Debian package).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench soak schemas mosquitto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing Mosquitto from the system packages"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

demo: $(STAMP) mosquitto
	$(BIN)/python -m devtools.demo

test: $(STAMP) mosquitto
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m devtools.import_cycles
	$(BIN)/python -m acquisition.schemas --check

schemas: $(STAMP)
	$(BIN)/python -m acquisition.schemas

bench: $(STAMP) mosquitto
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/well_latency.py
	$(BIN)/python bench/instrument_latency.py
	$(BIN)/python bench/analysis_fit.py
	$(BIN)/python bench/orchestrator.py
	$(BIN)/python bench/patch_stream.py
	$(BIN)/python bench/patch_experiment.py

# The chaos soak (issue 9): 20 full runs, daemon and broker SIGKILLs, figures (~6 min).
soak: $(STAMP) mosquitto
	$(BIN)/python bench/chaos_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis var
