# bunq-session-worker: `make help` lists the targets.
CARGO ?= cargo
# Integration tests run in parallel, each with its own queues and key prefix.
TEST_THREADS ?= 4

.DEFAULT_GOAL := help
.PHONY: help build demo test test-rust test-sdk lint fmt bench clean-test-state

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build the worker and fake-bunq
	$(CARGO) build --bins

demo: build ## Run the whole flow locally: fake-bunq, the worker, RabbitMQ and Redis
	$(CARGO) run --quiet --example demo -- --bin-dir "$$($(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

test: test-rust test-sdk ## Run every test (needs RabbitMQ and Redis on localhost)

test-rust: ## Unit and integration tests
	$(CARGO) test --all-targets -- --test-threads=$(TEST_THREADS)

test-sdk: ## bunq's official Python SDK opens a session against fake-bunq
	tests/sdk/run.sh

lint: ## Formatting and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all
