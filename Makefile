# Set-up on a fresh machine: `make demo` (runs the app) and `make test` (runs every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
SLIDE ?=
NO_MODEL ?=
MPP ?=
SAM_CHECKPOINT ?=
# Tests use the PostgreSQL and Redis servers of this machine over real connections.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/nephroweb
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
PYTEST_ARGS ?=

.PHONY: demo test env frontend browser benchmarks clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

frontend: frontend/dist/.built

frontend/dist/.built: frontend/package.json frontend/package-lock.json frontend/build.mjs $(wildcard frontend/src/*)
	cd frontend && npm ci --no-audit --no-fund && npm run build
	touch $@

# Debian's Chromium for the end-to-end tests (Playwright cannot download a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

demo: env frontend
	HOST=$(HOST) PORT=$(PORT) SLIDE=$(SLIDE) MPP=$(MPP) NO_MODEL=$(NO_MODEL) SAM_CHECKPOINT=$(SAM_CHECKPOINT) scripts/demo.sh

test: env frontend browser
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest $(PYTEST_ARGS)

# Every speed and memory benchmark, each updating its section of docs/benchmarks.md
# (about 35 minutes on 2 CPU cores). The API latency and review load runs need the
# PostgreSQL server.
benchmarks: env
	OMP_NUM_THREADS=1 $(PY) benchmarks/run.py --quick --points-per-side 16
	OMP_NUM_THREADS=1 $(PY) benchmarks/whole_slide.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/large_slide_memory.py
	DATABASE_URL=$(TEST_DATABASE_URL) OMP_NUM_THREADS=1 $(PY) benchmarks/api_latency.py --write-docs
	DATABASE_URL=$(TEST_DATABASE_URL) OMP_NUM_THREADS=1 $(PY) benchmarks/review_load.py --write-docs

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist
