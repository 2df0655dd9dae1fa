# Two commands on a fresh machine:  `make demo`  and  `make test`.
# torch is pinned and installed first: it is needed once, to export the bundled EfficientNet-Lite0
# weights to ONNX (inference runs on ONNX Runtime), and an unpinned torch would pull gigabytes.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench-dedup clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/imgaudit demo --out demo

test: install
	$(BIN)/ruff check imgaudit tests bench
	$(BIN)/lint-imports
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check imgaudit tests bench
	$(BIN)/ruff format --check imgaudit tests bench
	$(BIN)/lint-imports

# Needs the dev photos: ../shared/data/fetch-dev-photos.sh DIR, then `make bench-dedup PHOTOS=DIR`.
bench-dedup: install
	$(BIN)/python bench/dedup.py --photos $(PHOTOS)

clean:
	rm -rf $(VENV) demo data
