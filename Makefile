# The README's commands. Each target sets up its own environment from nothing on a fresh clone.
#   make demo     segment bundled images with the offline ToyWorld model -> figures/demo/
#   make test     lint (ruff) and run the test suite (offline)
#   make test-fast     everything but the slow and browser tests, for iteration
#   make test-engine   the engine's invariants (inversion, modulation, segment, layers)
#   make test-compat   engine, CLI and evaluation tests on the oldest declared dependencies
#   make figures  execute every notebook headlessly -> figures/
# Override e.g. MODEL=CompVis/stable-diffusion-v1-4 DEVICE=cuda DTYPE=float16 NUM_MASKS=30.

VENV ?= .venv
PYTHON ?= python3
# torch is installed on its own first so that pip takes this exact build (a CPU wheel here);
# on a machine that brings its own torch, set TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
# MODEL: toyworld (the project's own small trained model: offline, 64 px synthetic scenes),
# tiny (random weights, mechanics only), or a hub id / diffusers folder with real weights.
# Unset, both use toyworld: `make figures` runs every notebook on ToyWorld's held-out test scenes
# (quick mode on a CPU). Measured from an empty cache on 2 CPU cores with nothing else running:
# 8 min 29 s and 8 min 31 s (about 990 CPU s; the budget is 10 min), and 9 min 40 s from a fresh
# clone, setup included; per notebook in docs/notebooks.md.
MODEL ?=
DEMO_MODEL = $(or $(MODEL),toyworld)
FIGURES_MODEL = $(or $(MODEL),toyworld)
# Two notebooks at a time, one torch thread each: ToyWorld's 64 px batches gain little from a
# second thread, and on 2 cores shared with other jobs two threads spent about 4x the CPU time
# per scene spin-waiting (measured: 35-65 s against 10 s of CPU for one segment), so the two
# cores are better used by two kernels. Raise both on a larger machine.
FIGURES_THREADS ?= 1
FIGURES_JOBS ?= 2
DEVICE ?= cpu
DTYPE ?= float32
IMAGE_SIZE ?=
NUM_MASKS ?=
# ToyWorld segments held-out generated scenes; any other model the bundled photos.
DEMO_IMAGES ?= $(if $(filter toyworld,$(DEMO_MODEL)),emerdiff_lab/assets/toyworld/*.png,emerdiff_lab/assets/*.jpg)
SIZE_ARGS = $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(if $(NUM_MASKS),--num-masks $(NUM_MASKS))

BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

# The engine's invariant tests, which .ci/run repeats with two threads and with torch's portable
# CPU kernels (ATEN_CPU_CAPABILITY=default) to catch results that hold on one CPU only.
ENGINE_TESTS = tests/test_inversion.py tests/test_modulation.py tests/test_segment.py \
	tests/test_layers.py tests/test_processors.py tests/test_tolerances.py
# What the oldest declared diffusers / transformers / accelerate must pass.
# tests/test_pixart.py is left out: its tiny T5 tokenizer needs sentencepiece before transformers 5.
COMPAT_TESTS = $(ENGINE_TESTS) tests/test_architectures.py tests/test_models.py tests/test_cli.py \
	tests/test_config.py tests/test_images.py tests/test_evaluation_metrics.py \
	tests/test_evaluation_protocols.py \
	tests/test_evaluation_datasets.py tests/test_evaluation_runner.py
COMPAT_VENV ?= .venv-compat
PYTEST_ARGS ?=
# make test and make test-fast run the test files on two pytest-xdist workers of one torch thread
# each (tests/conftest.py), one file per worker at a time so that a file's module fixtures are
# built once. On 2 cores this halves the time of the many tests that are Python- and
# start-up-bound. TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
XDIST_ARGS = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: setup demo test test-fast test-engine test-compat figures clean

setup: $(VENV)/.installed

# A line per step with the seconds since set-up began, and pip's own lines (what it downloads
# and installs), so that the minutes of a first set-up never pass in silence.
STEP = @echo "[setup $$(( $$(date +%s) - $$(cat $(VENV)/.started) )) s]
# The clean filter that stores notebooks without outputs (nbstripout, keeping the cells' ids and
# dropping the kernel's version details, so that a run-and-saved notebook cleans to exactly the
# committed file). Installed into this clone's .git/config and .git/info/attributes only.
NBSTRIP_KEYS = metadata.language_info.codemirror_mode metadata.language_info.file_extension \
	metadata.language_info.mimetype metadata.language_info.nbconvert_exporter \
	metadata.language_info.pygments_lexer metadata.language_info.version

$(VENV)/.installed: pyproject.toml
	@echo "[setup] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@date +%s > $(VENV)/.started
	$(STEP) installing $(TORCH_SPEC) (the largest download)"
	$(BIN)/python -m pip install --progress-bar on "$(TORCH_SPEC)"
	$(STEP) installing the package with its dev, notebooks and eval extras"
	$(BIN)/python -m pip install --progress-bar on -e ".[dev,notebooks,eval]"
	$(STEP) installing the notebook clean filter (nbstripout) into this clone's git config"
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
		git config filter.nbstripout.clean \
			'"$(abspath $(BIN))/python" -m nbstripout --keep-id --extra-keys "$(NBSTRIP_KEYS)"'; \
		git config filter.nbstripout.smudge cat; \
		git config filter.nbstripout.required true; \
		attributes="$$(git rev-parse --git-path info/attributes)"; \
		mkdir -p "$$(dirname "$$attributes")"; \
		grep -qs "filter=nbstripout" "$$attributes" || \
			echo "*.ipynb filter=nbstripout" >> "$$attributes"; \
	else echo "[setup] not a git clone: no clean filter installed"; fi
	$(STEP) done"
	touch $@

demo: setup
	@echo "[demo] segmenting with $(DEMO_MODEL) -> figures/demo (set-up took $$(( \
		$$(stat -c %Y $(VENV)/.installed 2>/dev/null || date +%s) - \
		$$(cat $(VENV)/.started 2>/dev/null || date +%s) )) s when it ran)"
	@start=$$(date +%s); $(BIN)/python -m emerdiff_lab.demo $(DEMO_IMAGES) --model $(DEMO_MODEL) \
		--device $(DEVICE) --dtype $(DTYPE) $(SIZE_ARGS) --out figures/demo \
		&& echo "[demo] done in $$(( $$(date +%s) - start )) s"

test: setup
	$(BIN)/ruff check emerdiff_lab benchmarks scripts tests
	$(BIN)/pytest $(XDIST_ARGS) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -m "not slow and not browser" $(XDIST_ARGS) $(PYTEST_ARGS)

test-engine: setup
	$(BIN)/pytest $(ENGINE_TESTS) $(PYTEST_ARGS)

# A second environment with the lower bounds of pyproject.toml pinned (scripts/oldest_requirements.py
# reads them), so that the versions the package declares are versions that were tested.
$(COMPAT_VENV)/.installed: pyproject.toml scripts/oldest_requirements.py
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(COMPAT_VENV)/bin/python -m pip install --quiet -e ".[dev,eval]" \
		$$($(COMPAT_VENV)/bin/python scripts/oldest_requirements.py diffusers transformers accelerate)
	touch $@

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -c "import diffusers, transformers, accelerate, torch; \
		print('compat run on diffusers', diffusers.__version__, 'transformers', \
		transformers.__version__, 'accelerate', accelerate.__version__, 'torch', torch.__version__)"
	$(COMPAT_VENV)/bin/pytest $(COMPAT_TESTS) $(PYTEST_ARGS)

# Quick mode (128 px, <= 8 masks) is chosen automatically for the tiny model or a CPU.
figures: setup
	OMP_NUM_THREADS=$(FIGURES_THREADS) $(BIN)/emerdiff-lab figures --model $(FIGURES_MODEL) \
		--device $(DEVICE) --dtype $(DTYPE) --jobs $(FIGURES_JOBS) $(SIZE_ARGS) --out figures \
		$(FIGURES_ARGS)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) figures/demo figures/executed
