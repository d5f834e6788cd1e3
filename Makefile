# The two commands of the README:
#   make demo  - install everything, start the local stack, run the streaming job on sample data
#   make test  - install everything, start the local stack, run every check and test
.PHONY: install services demo test lint unit stop

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

test: services lint
	cargo test --quiet --no-default-features
	CI=$${CI:-true} .venv/bin/pytest

stop:
	scripts/services down
