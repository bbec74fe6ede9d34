# The README's two commands: `make run` (the app on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The tests use the machine's real PostgreSQL and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/cytomark
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install browser bench-tools lint migrations-check jstest clean

install: $(VENV)/.installed frontend/node_modules/.installed

# OpenSeadragon and tus-js-client from the npm registry, served as static files.
frontend/node_modules/.installed: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's Chromium and ChromeDriver for the browser tests (Playwright drives /usr/bin/chromium;
# it never downloads a browser).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# Debian's nginx (nginx-core: secure_link, as deploy/nginx-tiles.conf needs) and wrk for
# bench/tiles_http.py, which starts its own nginx on loopback; tests/test_tiles_nginx.py runs
# that nginx in front of the live app. (On a host with systemd the
# package also starts nginx's own site on port 80: `sudo systemctl disable --now nginx`.)
bench-tools:
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && command -v wrk >/dev/null || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-core wrk; }

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

# The script checks that Cytomark is not already running here before it migrates and seeds.
run: install
	HOST=$(HOST) PORT=$(PORT) PY=$(PY) deploy/run-embedded.sh

lint: install
	$(PY) -m ruff check .

migrations-check: install
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run

# The page scripts' modules (save queue, undo, HTTP client, taxonomy) under Node's own test
# runner: no npm packages, no browser.
jstest:
	node --test frontend/tests/*.test.mjs

test: install browser bench-tools lint migrations-check jstest
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest

clean:
	rm -rf $(VENV) var frontend/node_modules
