# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: demo test venv lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# A bare `torch` requirement would pull GBs of CUDA wheels: install the pinned CPU build first.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	LMFORGE_DATA_DIR=$${LMFORGE_DATA_DIR:-$(CURDIR)/../shared/data} $(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check lmforge tests bench examples
	$(BIN)/ruff format --check lmforge tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info
