# vitpipe: `make repro` runs the pipeline, `make test` runs the tests. Both install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
# Git revision `make report` compares with (CI: make report BASE=origin/main).
BASE   ?= main
# Stage commands in dvc.yaml call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: install install-report repro export test bench report pr-report clean-venv

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so a second `make install` takes a moment.
# pip, not uv/poetry: pip finds the local torch wheels (see docs/development.md, "Installing").
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

# What `vitpipe pr-report` needs, without PyTorch and the model libraries (CI's default job):
# the package without its dependencies, then the pinned ones except REPORT_SKIP.
# Re-installs only when pyproject.toml changes (its own stamp), so `make pr-report` installs once.
REPORT_SKIP  := torch torchvision timm kagglehub
REPORT_STAMP := $(VENV)/.installed-report
install-report: $(REPORT_STAMP)

$(REPORT_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c 'import sys, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
	  print("\n".join(d for d in deps if d.split("==")[0] not in sys.argv[1:]))' $(REPORT_SKIP) > $(VENV)/report-requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q -r $(VENV)/report-requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(REPORT_STAMP)

repro: install
	$(BIN)/dvc repro

# The optional ONNX export stage, a DVC project of its own (export/dvc.yaml), after the pipeline.
export: repro
	$(BIN)/dvc --cd export repro

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/vitpipe bench

report: install
	$(BIN)/vitpipe report --base $(BASE) --out report.md

# The pull request's report from what it commits (no training), with the freshness check.
pr-report: install-report
	$(BIN)/vitpipe pr-report --base $(BASE) --out report.md

clean-venv:
	rm -rf $(VENV)
