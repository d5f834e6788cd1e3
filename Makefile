# The two commands of the README:
#   make demo  - install everything, start the local stack, run the streaming job on sample data
#   make test  - install everything, start the local stack, run every check and test
.PHONY: install services emulators demo test lint check stop

install:
	bash scripts/install

services: install
	scripts/services up

demo: services
	bash scripts/demo

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings

# The edit-test loop: lint and the test modules that need no server (about 30 s). Needs the
# virtualenv (make install once); `make test` stays the full CI run.
PURE_TESTS = tests/test_exhaust_filters.py tests/test_flatten_rules.py tests/test_flatten_differential.py \
	tests/test_flatten_cli.py tests/test_config.py tests/test_engines.py \
	tests/test_metrics_bulk.py tests/test_write_time.py tests/test_k8s_manifests.py \
	tests/test_exhaust_crypto.py tests/test_exhaust_pure.py tests/test_readme.py tests/test_table.py \
	tests/test_unit_cassandra_writer.py tests/test_unit_failed.py tests/test_unit_offsets.py \
	tests/test_unit_sink.py tests/test_unit_source.py tests/test_unit_flow.py tests/test_unit_shutdown.py

check:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	cargo fmt --check
	CI= .venv/bin/pytest -q $(PURE_TESTS)

# The object-store emulators of the exhaust's storage tests (Azurite, SeaweedFS): test only.
emulators: install
	bash scripts/install emulators
	scripts/services up azurite seaweedfs

test: services emulators lint
	cargo test --quiet --no-default-features
	CI=$${CI:-true} .venv/bin/pytest

stop:
	scripts/services down
