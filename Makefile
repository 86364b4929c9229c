# The README's commands. Each target sets up its own environment from nothing on a fresh clone.
#   make demo     segment the bundled sample photos with the offline model -> figures/demo/
#   make test     run the test suite (offline)
#   make figures  execute every notebook headlessly -> figures/
# Override e.g. MODEL=CompVis/stable-diffusion-v1-4 DEVICE=cuda IMAGE_SIZE=512 NUM_MASKS=30.

VENV ?= .venv
PYTHON ?= python3
# torch is installed on its own first so that pip takes this exact build (a CPU wheel here);
# on a machine that brings its own torch, set TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
MODEL ?= tiny
DEVICE ?= cpu
DTYPE ?= float32
IMAGE_SIZE ?= 256
NUM_MASKS ?= 8

BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test figures clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks,eval]"
	touch $@

demo: setup
	$(BIN)/emerdiff-lab segment emerdiff_lab/assets/*.jpg --model $(MODEL) --device $(DEVICE) \
		--dtype $(DTYPE) --image-size $(IMAGE_SIZE) --num-masks $(NUM_MASKS) --out figures/demo
	@echo "results written to figures/demo/"

test: setup
	$(BIN)/pytest

# Quick mode (128 px, <= 8 masks) is chosen automatically for the tiny model or a CPU.
figures: setup
	$(BIN)/emerdiff-lab figures --model $(MODEL) --device $(DEVICE) --dtype $(DTYPE) \
		--out figures $(FIGURES_ARGS)

clean:
	rm -rf $(VENV) figures/demo figures/executed
