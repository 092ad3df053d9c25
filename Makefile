# The two commands a new user needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv crd lock clean tools

# System tools the tests and the demo run for real: Prometheus and promtool (Debian's package).
# The Kubernetes binaries and helm are built on first use into ~/.cache/slotune (see sandbox/build.py).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing Debian's prometheus package (prometheus, promtool)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q prometheus >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q prometheus >/dev/null; }; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP) tools
	$(BIN)/slotune demo

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy operator/slotune

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/render

test: tools lint typecheck
	$(BIN)/pytest

# The Helm chart installs a byte-for-byte copy of the CRD (tests/chart checks it).
crd: $(STAMP)
	$(BIN)/slotune crd > crds/slotune.dev_llmservices.yaml
	cp crds/slotune.dev_llmservices.yaml charts/slotune/files/crd.yaml

# The container image's pinned dependencies, with hashes: runtime deps of pyproject.toml plus the
# build backend (the Dockerfile builds slotune without build isolation, so from pinned tools).
lock: $(STAMP)
	$(BIN)/pip install --quiet uv
	printf 'setuptools>=68\nwheel\n' | $(BIN)/uv pip compile pyproject.toml - --generate-hashes \
	  --python-platform linux --python-version 3.11 --custom-compile-command "make lock" \
	  --quiet -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
