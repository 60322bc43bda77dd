# smmemu developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint type check firmware firmware-drivers bench bench-host-floor clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smmemu run

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check smmemu tests $(wildcard bench) firmware_blobs

type: $(STAMP)
	$(BIN)/mypy

check: lint type test

firmware: firmware-drivers $(STAMP)
	$(BIN)/python -m smmemu.firmware.build

# The test MM drivers in C (firmware_blobs/drivers); needs Debian's clang and lld.
firmware-drivers:
	$(PYTHON) firmware_blobs/drivers/build.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

# The least host work a faithful SMI round trip needs, on bare Unicorn (bench/README.md).
bench-host-floor: $(STAMP)
	$(BIN)/python bench/host_floor.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
