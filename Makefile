# Uplink: every target sets itself up; `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
STUBS := $(VENV)/mpstubs

.PHONY: setup test demo bench soak build deploy lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup.sh tools/esp32-model/micropython
	bash tools/setup.sh
	touch $(STAMP)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright -p pyrightconfig.json
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/pyright -p pyrightconfig.json

demo: setup
	$(PY) -m host_tools.demo $(DEMO_ARGS)

bench: setup
	$(PY) -m tests.bench $(BENCH_ARGS)

soak: setup
	$(PY) -m tests.soak $(SOAK_ARGS)

build: setup
	$(VENV)/bin/uplink build $(if $(BOARD),--board $(BOARD))

deploy: setup
	$(VENV)/bin/uplink deploy $(DEVICE) $(if $(PORT),--port $(PORT))

clean:
	rm -rf build .pytest_cache
