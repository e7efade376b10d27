# Uplink: every target sets itself up; `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
STUBS := $(VENV)/mpstubs

.PHONY: setup test test-fast demo bench soak build deploy lint typecheck clean

# pytest-xdist workers; a file's tests stay on one worker (one MicroPython process per
# firmware test group). The suite mostly waits (about 1 core busy with 3 workers on 2), so 3
# workers: make test-fast 2m00 (2m43 with 2). PYTEST_N=0 runs in this process (for --pdb).
PYTEST_N ?= 3
PYTEST := $(VENV)/bin/pytest -n $(PYTEST_N) --dist loadfile

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup.sh tools/esp32-model/micropython
	bash tools/setup.sh
	touch $(STAMP)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright -p pyrightconfig.json
	$(PYTEST) $(PYTEST_ARGS)

# the inner loop: host tests and firmware tests on the ESP32 model; no end-to-end scenarios
# (tests/integration/, @slow) and no [py] runs on the 64-bit port
test-fast: setup
	$(PYTEST) -m "not slow and not pyport" $(PYTEST_ARGS)

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
