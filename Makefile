# The two set-up commands of the README. Each works on a fresh machine by itself.
.PHONY: demo test setup lint

setup:
	bash scripts/setup.sh

# The main job: a scheme search on Fashion-MNIST.
demo: setup
	.venv/bin/lmsearch search search_spaces/fashion_quick.yaml --out results/fashion_quick-$$(date +%Y%m%d-%H%M%S)

# two workers, one test file each at a time (a file's module fixtures are built once): most tests wait on
# Ray and subprocesses, so two files at a time finish in about 2/3 of the serial time on 2 cores
test: setup
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q -n 2 --dist loadfile

lint: setup
	.venv/bin/ruff check lmsearch tests benchmarks
