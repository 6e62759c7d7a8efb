# The two commands of the README: `make demo` and `make test`. Both create .venv if it is missing.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo_out
SEED := 0

.PHONY: demo test venv lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[seg-lite,det,slurm,dev]'
	touch $(STAMP)

# The suite includes tests/test_wheel.py: scripts/check_wheel.sh builds the wheel and runs it installed.
test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO) $(SEED)
