# The two set-up commands of the README. Each works on a fresh machine by itself.
.PHONY: demo test setup lint

setup:
	bash scripts/setup.sh

# The main job: a scheme search on Fashion-MNIST.
demo: setup
	.venv/bin/lmsearch search search_spaces/fashion_quick.yaml --out results/fashion_quick-$$(date +%Y%m%d-%H%M%S)

test: setup
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check lmsearch tests benchmarks
