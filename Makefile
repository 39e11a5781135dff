# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: demo test test-portable venv browser compiler lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# A bare `torch` requirement would pull GBs of CUDA wheels: install the pinned CPU build first.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	@$(MAKE) --no-print-directory browser compiler
	@touch $(STAMP)

venv: $(STAMP)

# What the tests need from the system, installed with apt-get when missing and we are root or have
# passwordless sudo, else one line saying how: Debian's chromium (the playground's browser tests
# drive it through Playwright, no browser download) and g++ (the decode engine builds its
# small-rows kernel with it). A failed install does not stop `make test`: those tests then fail
# with that line. `test` checks again (a kept .venv skips the $(STAMP) rule; the check is free).
# $(call apt-need,COMMAND,PACKAGE,WHAT FOR)
define apt-need
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else sudo=no; fi; \
	  if [ "$$sudo" = no ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "lmforge: $(3) need $(2): sudo apt-get install $(2)"; \
	  else \
	    $$sudo apt-get install -y -q $(2) || \
	    { $$sudo apt-get update -q && $$sudo apt-get install -y -q $(2); } || \
	    echo "lmforge: could not install $(2): sudo apt-get install $(2)"; \
	  fi; }
endef

browser:
	$(call apt-need,chromium,chromium,the playground tests)

compiler:
	$(call apt-need,c++,g++,the decode kernel tests)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The first line names the machine (CPU, features, torch's kernels, threads), so a red CI run can
# be attributed to a CPU.
test: $(STAMP) browser compiler
	@$(BIN)/python -m lmforge.device
	LMFORGE_DATA_DIR=$${LMFORGE_DATA_DIR:-$(CURDIR)/../shared/data} $(BIN)/python -m pytest tests

# Every code path torch can take on this machine: native kernels, AVX2 and plain (no AVX)
# ATen kernels, and oneDNN held to AVX2 (no AVX-512, no bf16/AMX matmuls).
test-portable: $(STAMP)
	@$(MAKE) --no-print-directory test
	@ATEN_CPU_CAPABILITY=avx2 $(MAKE) --no-print-directory test
	@ATEN_CPU_CAPABILITY=default $(MAKE) --no-print-directory test
	@ONEDNN_MAX_CPU_ISA=AVX2 $(MAKE) --no-print-directory test

lint: $(STAMP)
	$(BIN)/ruff check lmforge tests bench examples
	$(BIN)/ruff format --check lmforge tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info
