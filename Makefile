# The two commands of the README:
#   make demo  - install everything, start the local stack, run the streaming job on sample data
#   make test  - install everything, start the local stack, run every check and test
.PHONY: install services emulators demo test lint unit stop

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

# The object-store emulators of the exhaust's storage tests (Azurite, SeaweedFS): test only.
emulators: install
	bash scripts/install emulators
	scripts/services up azurite seaweedfs

test: services emulators lint
	cargo test --quiet --no-default-features
	CI=$${CI:-true} .venv/bin/pytest

stop:
	scripts/services down
