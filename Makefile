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

# OS packages $(2) for what the tests and the demo run, when one of the commands $(1) is missing:
# installed where there is apt and we are root, non-interactive, waiting for apt's lock, with a
# policy-rc.d that forbids starting packaged services (dlkit runs its own). Elsewhere it says what
# is skipped ($(3)).
define os_packages
	@if (for c in $(1); do command -v $$c >/dev/null || exit 1; done); then \
	  :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  policy=/usr/sbin/policy-rc.d; added=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; added=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends $(2); \
	  status=$$?; [ -n "$$added" ] && rm -f $$policy; \
	  exit $$status; \
	else \
	  echo "$(2): not installed and cannot be installed here (needs apt-get and root): $(3)"; \
	fi
endef

# Prometheus, promtool, and amtool (prometheus-alertmanager) to check infra/alertmanager.
prometheus:
	$(call os_packages,prometheus promtool amtool,prometheus prometheus-alertmanager,the stack runs without Prometheus and its tests are skipped)

# Chromium for the browser tests (tests/test_ui.py drive it with Playwright; Playwright's own
# browser download is not used).
chromium:
	$(call os_packages,chromium,chromium,the browser tests are skipped)

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

# wrk, the HTTP load generator of `make bench` and of its test; without it the wrk ratios (P1, P2)
# are reported as not measured and the rest still runs.
wrk:
	$(call os_packages,wrk,wrk,P1 and P2 are skipped)

# `make bench`: the performance ratios of issue 12 in one run (BENCHMARKS.md), on an embedded stack of
# its own, under 5 minutes. BENCH_ARGS passes options through, e.g. `make bench BENCH_ARGS="--json bench.json"`.
bench: $(BIN)/.installed wrk
	$(BIN)/dlkit bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .dlkit .pytest_cache
