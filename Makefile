# `make demo` and `make test` work on a fresh machine with only python3 and make:
# each creates .venv and installs the package with its dev extras first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# openai 2.x cannot share a venv with openai 3.x: its SDK tests run in a second one
OA2    := .venv-openai2
OA2_STAMP := $(OA2)/.installed-stamp
# litellm pins openai < 3: the LiteLLM integration is tested in a venv of its own
LITELLM := .venv-litellm
LITELLM_STAMP := $(LITELLM)/.installed-stamp

.PHONY: demo test lint check bench bench-instructions bench-peers clean

$(STAMP): pyproject.toml integrations/langchain/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e 'integrations/langchain[dev]'
	touch $(STAMP)

$(OA2_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OA2)
	$(OA2)/bin/python -m pip install --quiet --upgrade pip
	$(OA2)/bin/python -m pip install --quiet -e . pytest pytest-asyncio hypothesis httpx2 'openai>=2,<3'
	touch $(OA2_STAMP)

$(LITELLM_STAMP): pyproject.toml integrations/litellm/pyproject.toml
	$(PYTHON) -m venv $(LITELLM)
	$(LITELLM)/bin/python -m pip install --quiet --upgrade pip
	$(LITELLM)/bin/python -m pip install --quiet -e . -e 'integrations/litellm[dev]'
	touch $(LITELLM_STAMP)

demo: $(STAMP)
	$(BIN)/creditguard demo

test: $(STAMP) $(OA2_STAMP) $(LITELLM_STAMP)
	$(BIN)/python -m pytest
	@echo "--- integrations/langchain ---"
	$(BIN)/python -m pytest integrations/langchain/tests
	@echo "--- the openai SDK tests again, under openai 2.x ---"
	$(OA2)/bin/python -m pytest -p no:cacheprovider tests/test_sdk_openai.py
	@echo "--- integrations/litellm (its own venv: litellm pins openai < 3) ---"
	$(LITELLM)/bin/python -m pytest integrations/litellm/tests

lint: $(STAMP) $(LITELLM_STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy --strict src
	$(BIN)/python tests/readme_snippets.py
	$(BIN)/ruff check integrations/langchain
	$(BIN)/ruff format --check integrations/langchain
	$(BIN)/mypy --strict integrations/langchain/src
	$(BIN)/ruff check integrations/litellm
	$(BIN)/ruff format --check integrations/litellm
	$(LITELLM)/bin/mypy --strict integrations/litellm/src

check: lint test

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/burst.py
	$(BIN)/python benchmarks/store.py

# the same rows counted in CPU instructions under callgrind: figures that machine
# noise cannot move (about 10 minutes; needs valgrind)
bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/instructions.py

# creditguard side by side with the peer libraries (issue 17; not run by CI):
# builds .venv-peers (openai 3.x + httpx2) and .venv-peers-openai2 (openai 2.x +
# httpx) on first use, each with the peers that install; about 6 minutes
bench-peers:
	$(PYTHON) benchmarks/peers.py

clean:
	rm -rf $(VENV) $(OA2) $(LITELLM) .venv-peers .venv-peers-openai2 .pytest_cache .mypy_cache .ruff_cache
