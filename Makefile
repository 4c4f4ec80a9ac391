# `make run` sets up .venv and serves everything; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
ORT_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
TCMALLOC = $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
# glibc malloc makes batched torch on CPU 1.6-3x slower (page faults); tcmalloc fixes that.
RUN_ENV = $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC))

.PHONY: setup run test bench clean clean-data help

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(TCMALLOC)" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) || true; fi
	@# the browser tests drive Debian's Chromium (Playwright's own browser download needs the internet)
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq chromium >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || true; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[$(ORT_EXTRA),test]'
	$(PY) -m pip install -q --no-deps foolbox==3.3.4
	touch $@

run: setup
	exec env PORT=$(PORT) $(RUN_ENV) $(PY) -m service.launch  # exec: make's SIGTERM reaches the launcher, not sh

test: setup
	$(RUN_ENV) $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@if [ ! -d /usr/share/tuxpaint/stamps ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq tuxpaint-stamps-default >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq tuxpaint-stamps-default >/dev/null) || true; fi
	$(RUN_ENV) $(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache

# what the service keeps: uploaded models, data sets, jobs and their artifacts, the embedded Redis
clean-data:
	rm -rf var

help:
	@echo "make run         set up .venv and start the API, a worker and Redis on PORT (default 8000)"
	@echo "make test        set up .venv and run the tests (PYTEST_ARGS=... passes options to pytest)"
	@echo "make bench       set up .venv and run the benchmarks (bench/), printing ratios measured side by side"
	@echo "make setup       only set up .venv"
	@echo "make clean       remove .venv and pytest's cache (the service's data in var/ stays)"
	@echo "make clean-data  remove var/: every uploaded model, data set, job and artifact"
