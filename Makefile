# Two entry points: `make demo` (synthetic data -> train -> score) and `make test`.
# Each creates .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
WORK    ?= runs/demo
DATA    ?= data/synth_dcase

.PHONY: demo test test-gpu-plan venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vqax demo --data_root $(DATA) --workdir $(WORK)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# GPU-target planning (`vqax plan --target`) with the [plan-gpu] extra installed beside the venv, not in it
# (JAX's CUDA plugin is 0.5 GB and talks on every `import jax`): the compiles that `make test` skips.
PLAN_GPU := .plan-gpu
$(PLAN_GPU)/.installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q --target $(PLAN_GPU) $$($(BIN)/python -c "import tomllib; \
	    print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['plan-gpu']))")
	touch $@

test-gpu-plan: $(PLAN_GPU)/.installed
	PYTHONPATH=$(PLAN_GPU) VQAX_REQUIRE_PLAN_GPU=1 $(BIN)/python -m pytest -q tests/test_gpu_plan.py

clean:
	rm -rf runs data/synth_dcase
