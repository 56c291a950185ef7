# genpipe: the two commands of the README quickstart, and what they need.
#   make run   set up .venv, then run the main job on the embedded defaults (quick profile);
#              ARGS="-S key=value ..." for other settings, e.g. ARGS="-S preset=colour32 -S data.source=shapes"
#   make test  set up .venv, then run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run repro test install lock clean
.DEFAULT_GOAL := run

install: $(STAMP)

# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels on CPU hosts.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# The Prefect flow (a temporary local Prefect API unless PREFECT_API_URL is set):
# prepare -> features + train -> evaluate -> generate -> report, then `dvc commit` so `dvc status` is clean.
run: $(STAMP)
	$(BIN)/python -m flows.pipeline $(ARGS)
	@echo "browse the runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db, then open"
	@echo "  http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"

# The same pipeline through DVC (does nothing when `make run` already produced everything).
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest

# Re-resolve the pinned set after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache mlflow.db mlartifacts .ray_results data models figures generated reports dvc_plots metrics/*.json metrics/*.png
