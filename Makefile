# vitpipe: `make repro` runs the pipeline, `make test` runs the tests. Both install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
# Git revision `make report` compares with (CI: make report BASE=origin/main).
BASE   ?= main
# Stage commands in dvc.yaml call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test bench report clean-venv

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so a second `make install` takes a moment.
# pip, not uv/poetry: pip finds the local torch wheels (see README, "Installing").
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/vitpipe bench

report: install
	$(BIN)/vitpipe report --base $(BASE) --out report.md

clean-venv:
	rm -rf $(VENV)
