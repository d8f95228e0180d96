# detectd: two commands do everything. `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test venv venv-test sysdeps bench clean

# Debian's python3 needs python3-venv (ensurepip) for `python3 -m venv`: install it when missing.
$(BIN)/python:
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv (Debian) for 'python3 -m venv'"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv >/dev/null; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime dependencies only; re-run pip whenever pyproject.toml changes.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# Plus what the tests and benchmarks need (OpenCV as an independent reference, playwright, ...).
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@ $(RUN_STAMP)

venv: $(RUN_STAMP)
venv-test: $(TEST_STAMP)

run: venv
	$(BIN)/detectd fetch-model
	$(BIN)/detectd run --config $(CONFIG)

# Debian packages the tests need (RTSP server, Prometheus, Chromium, systemd-analyze), when missing.
sysdeps:
	@pkgs=$$(grep -v '^#' .ci/apt-packages.txt | xargs); \
	missing=""; for p in $$pkgs; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# pytest exits 5 when it collected no test: a broken suite, not a pass. mypy first: the package
# is typed (disallow_untyped_defs, pyproject [tool.mypy]) and stays so.
test: venv-test sysdeps
	$(BIN)/python -m mypy daemon
	$(BIN)/detectd fetch-model
	@$(BIN)/python -m pytest -q -rs --durations=30 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: venv-test
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) build *.egg-info
