# The two commands of the README: `make run` and `make test`. Everything else is a convenience.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ESPER  := $(VENV)/bin/esper
PYTEST := $(VENV)/bin/pytest
STAMP  := $(VENV)/.installed

.PHONY: setup kafka browser run test lint unit proto bench soak crash fuse clean-state

# The virtual environment, the project (editable) and its declared dependencies; redone when pyproject changes.
# Strict editable mode links every module into build/ (static paths mypy can follow), so adding a module
# means reinstalling: the stamp depends on the package folders too.
$(STAMP): pyproject.toml cli/ proto/ streams/ streams/local/ projections/ compiler/ compiler/wal/ compiler/artifacts/ compiler/ir/ compiler/service/ safety/
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

setup: $(STAMP)

# Apache Kafka jars from Maven Central into .esper/kafka/<version> (once).
kafka: setup
	$(ESPER) broker tools > /dev/null

# Chromium and its WebDriver from Debian's packages, for the dashboard's browser test (once; sudo when not root).
browser:
	@if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then \
	  if ! command -v apt-get > /dev/null; then \
	    echo "make browser: chromium and chromedriver are missing and apt-get is not available;" \
	      "install Chromium and its chromedriver (Debian: chromium, chromium-driver) into /usr/bin" >&2; \
	    exit 1; \
	  fi; \
	  sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium chromium-driver; \
	fi

run: setup kafka
	$(ESPER) run

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy cli streams projections compiler safety proto/generate.py tests/wal_simfs.py tests/sinks.py

test: setup kafka browser lint
	$(PYTEST) -q

unit: setup
	$(PYTEST) -q tests/unit

proto: setup
	$(PY) proto/generate.py

bench: setup kafka
	$(PY) bench/run_all.py

# A running Tezzeret's memory over 10,000 requests for distinct blueprints (minutes; not part of `make test`).
soak: setup kafka
	$(PY) bench/soak_service.py

# The long crash matrix (thousands of kill -9 runs, every power-loss reordering); `make test` runs the short one.
crash: setup fuse
	ESPER_CRASH_LONG=1 $(PYTEST) -q tests/crash

# FUSE for C3 (power loss through tests/crash/lazyfs.py): the system's fuse3 and the mfusepy bindings.
fuse: setup
	command -v fusermount3 || (apt-get update -qq && apt-get install -y -qq fuse3 libfuse3-3)
	$(PY) -m pip install --quiet mfusepy

clean-state:
	-$(ESPER) broker down
	rm -rf .esper
