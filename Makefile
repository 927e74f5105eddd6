# The two set-up commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/dlkit demo

test: $(BIN)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .dlkit .pytest_cache
