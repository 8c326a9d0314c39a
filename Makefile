# Front door: `make run` serves everything on the embedded default; `make test` installs what the
# tests need (apt packages included) and runs every test. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export DATA_DIR ?= $(CURDIR)/var

.PHONY: venv run test test-deps test-debs test-unit test-sqlite test-postgres test-s3 check bench bench-bazel bench-storage proto clean

# Development installs the tools too (requirements-dev.txt); a server needs only requirements.txt.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) manage.py migrate --no-input -v0
	$(PY) manage.py runall

# Debian packages the tests drive for real: Bazel 4.2.3, bubblewrap and a C compiler with a
# static libc (the workers' sandbox and its sandbox-exec), Chromium, systemd (systemd-analyze
# checks deploy/) and Node.js with npm (the OpenID provider the tests sign in through,
# tests/oidc-provider/). Services this kind of machine runs are started when they are down.
test-deps: venv test-debs tests/oidc-provider/node_modules/.installed
	@bash tests/start-services.sh

test-debs:
	@if ! command -v bazel >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v bwrap >/dev/null || ! command -v cc >/dev/null \
	    || ! test -e /usr/lib/x86_64-linux-gnu/libc.a -o -e /usr/lib/aarch64-linux-gnu/libc.a \
	    || ! command -v systemd-analyze >/dev/null \
	    || ! command -v node >/dev/null || ! command -v npm >/dev/null \
	    || ! dpkg -s libnetty-tcnative-jni >/dev/null 2>&1; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    bazel-bootstrap bubblewrap chromium gcc libc6-dev libnetty-tcnative-jni systemd \
	    $$(command -v node >/dev/null || echo nodejs) $$(command -v npm >/dev/null || echo npm); fi

# The provider's npm packages, exactly as package-lock.json pins them.
tests/oidc-provider/node_modules/.installed: tests/oidc-provider/package-lock.json | test-debs
	cd tests/oidc-provider && npm ci --no-audit --no-fund
	touch $@

# The three suites run in two streams side by side (tests/run-suites.sh): SQLite beside
# PostgreSQL then S3. Each target below also runs alone.
test: test-deps test-unit
	@bash tests/run-suites.sh

# The pure logic (routing, paths, parsing), in seconds; also part of test-sqlite.
test-unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-sqlite: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-postgres: venv
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
	  $(PY) -m pytest -m "not bazel and not browser" $(PYTEST_ARGS)

# The REAPI tests, the Bazel round trip and remote execution again, with both clusters' storage on S3 (SeaweedFS).
test-s3: venv
	TEST_STORAGE=s3 $(PY) -m pytest tests/test_reapi_*.py tests/test_cache_bazel.py tests/test_execution_api.py $(PYTEST_ARGS)

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(PY) manage.py makemigrations --check --dry-run

bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# What a Bazel build feels: real Bazel against ours, bare grpcio, BuildGrid and a disk cache.
bench-bazel: venv
	$(PY) bench/bazel.py $(BENCH_ARGS)

# The storage figures: the same workloads on S3 (SeaweedFS) and in pass-through beside direct.
bench-storage: venv
	$(PY) bench/storage.py $(BENCH_ARGS)

proto: venv
	PATH=$(VENV)/bin:$$PATH sh reapi/gen/regenerate.sh

clean:
	rm -rf $(VENV) var tests/artifacts tests/oidc-provider/node_modules
