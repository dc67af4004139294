# s2feature — the targets people type. `make help` lists them.
SHELL := /bin/bash
# Resolved when first used, after `setup` may have installed it.
UV = $(shell scripts/ensure-uv.sh)
OUT ?= out

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo bench soak lint check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## install uv (if absent) and the locked dependencies
	@$(UV) sync --frozen --quiet
	@scripts/ensure-redis.sh

test: setup ## run the whole test suite
	$(UV) run pytest -q

test-fast: setup ## the test suite without the slow tests
	$(UV) run pytest -q -m "not slow"

demo: setup ## compute features on the real BTC/USD data and print a summary
	$(UV) run s2-feature demo --out-dir $(OUT)

bench: setup ## performance figures and ratios, measured in one run
	$(UV) run python benches/run.py
	$(UV) run python benches/service_bench.py
	$(UV) run python benches/recompute_bench.py
	$(UV) run python benches/live_under_recompute.py
	$(UV) run python benches/venue_bench.py --symbols 3,10,100

soak: setup ## 10 minutes at 1,000 entries/s over 100 symbols: RSS curve and latency (not in CI)
	$(UV) run python benches/venue_soak.py --symbols 100 --minutes 10 --rate 1000

lint: setup ## ruff, formatting and mypy --strict
	$(UV) run ruff check src tests benches
	$(UV) run ruff format --check src tests benches
	$(UV) run mypy
	$(UV) run lint-imports

check: lint test ## lint and tests

clean: ## remove build and run artefacts
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
