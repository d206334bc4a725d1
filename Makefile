# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv/ in the repository root and install the project there.
PYTHON ?= python3
VENV := .venv
# The CPU build lies on this project's machines; elsewhere pip fetches the matching build.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/shopping-mmlu demo

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest
