# detectd: two commands do everything. `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
STAMP := $(VENV)/.installed

.PHONY: run test venv sysdeps bench clean

venv: $(STAMP)

# Re-run pip whenever the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

run: venv
	$(BIN)/detectd fetch-model
	$(BIN)/detectd run --config $(CONFIG)

# Debian packages the tests need (RTSP server, Prometheus, Chromium, ...), installed when missing.
sysdeps:
	@pkgs=$$(grep -v '^#' .ci/apt-packages.txt | xargs); \
	missing=""; for p in $$pkgs; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: venv sysdeps
	$(BIN)/detectd fetch-model
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) build *.egg-info
