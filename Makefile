# Two commands do all set-up on a fresh machine:
#   make demo   - a local group: four replicas, each with its own real Triton and model
#   make test   - the test suite
# Both create or refresh the project-local virtual environment .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEEDS ?= 1000
PYTEST_ARGS ?=

.PHONY: venv demo test sim bench protos clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/quorumserve demo

# pytest exits 5 when it collected no tests: that is a failure here, a green run must mean tests ran.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

sim: $(STAMP)
	$(PY) -m tests.sim.run --seeds $(SEEDS)

bench: $(STAMP)
	$(PY) -m tests.bench.run

protos: $(STAMP)
	$(PY) -m protos.build

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
