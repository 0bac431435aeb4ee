# Two commands do all the set-up on a fresh machine:
#   make repro   create .venv, install pinned deps, run the DVC pipeline on the embedded default
#   make test    same set-up, then the pytest suite (CPU, tiny configs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
# CPU build where there is no NVIDIA GPU: add PyTorch's CPU index when it is reachable
# (an unpinned or plain PyPI torch pulls several GB of CUDA packages); on machines that
# carry a local CPU wheel (pip find-links) the pin alone already picks it.
TORCH_INDEX ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || \
	(curl -s --max-time 5 -o /dev/null https://download.pytorch.org/whl/cpu/ && \
	 echo --extra-index-url https://download.pytorch.org/whl/cpu))
STAMP := $(VENV)/.installed
MUTMUT := mutmut==3.8.1
MUTMUT_STAMP := $(VENV)/.mutmut

.PHONY: setup repro synthetic questions lint format docs test mutation benchmark frontier topk-speed speed saelens-venv clean-venv

setup: $(STAMP)

# The locked packages go in with uv where it installs, else with pip: the same versions (requirements.lock pins
# every package), uv in seconds (timings: docs/usage.md, "Set-up"). torch stays with pip: uv reads neither pip's
# config nor its find-links, where a machine's local CPU wheel may lie.
UV := uv==0.13.9
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH) $(TORCH_INDEX)
	($(BIN)/python -m pip install -q $(UV) && $(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock) \
		|| $(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The research pipelines are DVC projects of their own (their views stay out of the root's `dvc exp show`):
# the synthetic-features pipeline (research/synthetic/, docs/synthetic.md) and the reference post's open
# questions (research/questions/, on top of the root pipeline's outputs; docs/questions.md).
synthetic: $(STAMP)
	test -d .git || git init -q
	cd research/synthetic && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/dvc repro

questions: repro
	cd research/questions && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/dvc repro

# every file compiles under the venv's Python; ruff: lint and format check (rules in pyproject.toml); `make format` applies the formatter and safe fixes
LINTED := src stages tests benchmarks research
lint: $(STAMP)
	$(BIN)/python -m compileall -q $(LINTED)  # the venv's Python parses every file (ruff's parser is newer)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# The documentation site (mkdocs, Material theme) into site/; --strict: a broken link or page fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The SAELens interchange test runs the real SAELens in its own venv (it pins transformer-lens < 4);
# where it cannot be installed (no network) that test is skipped with the reason, the rest still runs.
# pytest-xdist: one worker per core (TEST_JOBS; threads split between them), tests sharing a module-scoped fixture
# on one worker, in collection order (tests/conftest.py puts the longest first; xdist's default reorder would put
# the multi-test groups first); TEST_JOBS=0: one process.
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: $(STAMP) $(MUTMUT_STAMP) lint
	-$(MAKE) --no-print-directory saelens-venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder --durations=20

# Mutation testing of the formula modules (benchmarks/mutation.py, docs/contributing.md "Mutation testing"): slow,
# not part of `make test` (tests/test_mutation.py runs a small smoke case); MUTATION_ARGS adds flags (--only ...).
$(MUTMUT_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q $(MUTMUT)
	touch $@

mutation: $(MUTMUT_STAMP)
	-$(MAKE) --no-print-directory saelens-venv
	$(BIN)/python benchmarks/mutation.py $(MUTATION_ARGS)

# Trainer benchmark: saelab vs SAELens (own venv: it pins transformer-lens < 4) vs the reference code's loop,
# on the first tokens of data/activations (run `make repro` first). BENCH_ARGS adds flags.
SAELENS := sae-lens==6.54.12
BENCH_VENV := .venv-saelens
saelens-venv: $(BENCH_VENV)/.installed
$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $(TORCH) $(TORCH_INDEX)
	$(BENCH_VENV)/bin/python -m pip install -q $(SAELENS)
	touch $@

# EleutherAI's sparsify for the TopK speed benchmark, in a venv of its own (its deps pull transformers)
SPARSIFY := eai-sparsify==1.3.3
SPARSIFY_VENV := .venv-sparsify
$(SPARSIFY_VENV)/.installed:
	test -x $(SPARSIFY_VENV)/bin/python || $(PYTHON) -m venv $(SPARSIFY_VENV)
	$(SPARSIFY_VENV)/bin/python -m pip install -q $(TORCH) $(TORCH_INDEX)
	$(SPARSIFY_VENV)/bin/python -m pip install -q $(SPARSIFY)
	touch $@

# Every architecture of saelab and SAELens on one L0 frontier (benchmarks/results/frontier_cpu/)
frontier: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python benchmarks/frontier.py --saelens-python $(BENCH_VENV)/bin/python $(BENCH_ARGS)

# TopK training speed at 512 -> 16384, k 32, batch 4096: saelab vs SAELens vs sparsify
topk-speed: $(STAMP) $(BENCH_VENV)/.installed $(SPARSIFY_VENV)/.installed
	$(BIN)/python benchmarks/topk_speed.py --saelens-python $(BENCH_VENV)/bin/python \
		--sparsify-python $(SPARSIFY_VENV)/bin/python $(BENCH_ARGS)

# One speed report (benchmarks/speed.py): the lm stage's step, TopK (saelab default and unit recipes vs SAELens and
# sparsify) and dense (saelab vs SAELens), medians of 3 rounds, one table: benchmarks/results/speed_<cpu|gpu>/speed.md
# (the trainers read the default activation cache: built first, up to the activations stage, where it is missing)
speed: $(STAMP) $(BENCH_VENV)/.installed $(SPARSIFY_VENV)/.installed
	test -f data/activations/manifest.json || PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro activations
	$(BIN)/python benchmarks/speed.py --saelens-python $(BENCH_VENV)/bin/python \
		--sparsify-python $(SPARSIFY_VENV)/bin/python $(if $(shell command -v nvidia-smi),--device cuda \
		--topk-steps 150 --dense-tokens 1228800 --out benchmarks/results/speed_gpu) $(SPEED_ARGS)

benchmark: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python benchmarks/trainers.py --saelens-python $(BENCH_VENV)/bin/python \
		--out benchmarks/results/trainers_$(if $(shell command -v nvidia-smi),gpu,cpu).json $(BENCH_ARGS)
	$(BIN)/python benchmarks/reader.py data/activations

clean-venv:
	rm -rf $(VENV)
