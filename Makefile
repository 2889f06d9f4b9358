# Two entry points (README): `make demo` trains on the bundled dataset, `make test` runs the test suite.
# Both create .venv and install what they need; torch is pinned to the CPU build 2.13.0 first so that no
# CUDA wheels are pulled in.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/locallearn train --out runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Fashion-MNIST from Debian's dataset-fashion-mnist, installed in /usr/share/datasets/fashion-mnist, where
# locallearn looks when --data-dir does not hold it (apt-get update only if the install fails on stale lists;
# sudo only when not root). Without apt-get: say how to download the official files instead.
.PHONY: fashion-mnist
fashion-mnist:
	@if command -v apt-get >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get install -y dataset-fashion-mnist \
			|| { $$sudo apt-get update && $$sudo apt-get install -y dataset-fashion-mnist; }; \
	else \
		echo "make fashion-mnist: no apt-get on this system; run \`locallearn data download fashion_mnist --root data\` instead."; \
		exit 1; \
	fi
