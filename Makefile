# The two commands of the README, and a few more for developers. Run them as root (sudo make ...).
VENV := .venv/bin

.PHONY: workshop test test-vm provision lint

workshop: ## install everything, then start JupyterLab on the lessons
	scripts/provision.sh
	$(VENV)/jupyter lab --allow-root --no-browser --ip 127.0.0.1 --port 8888 --notebook-dir lessons

test: ## install everything (the default images too: tests run the Debian one), then run the whole suite
	scripts/provision.sh
	$(VENV)/pytest

test-vm: ## provision (no images), then the VM test: a Debian 12 VM on a pure cgroup v2 kernel (README)
	scripts/provision.sh --no-images
	$(VENV)/python scripts/vm/run.py

provision:
	scripts/provision.sh

lint:
	$(VENV)/ruff check mini_container webapp tests

.PHONY: bench
bench: ## install everything, then the side-by-side benchmarks (ratios, not a test: docs/benchmarks.md)
	scripts/provision.sh
	$(VENV)/python -m benchmarks.bench_unpack
	$(VENV)/python -m benchmarks.bench_run
