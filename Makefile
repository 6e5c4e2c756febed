# Two commands do all the set-up: `make demo` and `make test`. Both are idempotent: the virtual
# environment is created once and reinstalled only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PEERS := foolbox==3.3.4 torchattacks==3.5.1 adversarial-robustness-toolbox==1.20.1
PEER_DEPS := eagerpy GitPython requests six tqdm
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
VTEST := /usr/share/doc/opencv-doc/examples/data/vtest.avi
export OMP_NUM_THREADS ?= 2

.PHONY: demo test lint pytest install install-test fmnist browser video bench repro clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(PEERS)
	$(PY) -m pip install -q $(PEER_DEPS)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Real Fashion-MNIST from Debian, when it is missing and apt is usable (root); otherwise carry on without it.
fmnist:
	@if [ ! -f $(FMNIST) ] && [ -z "$$GEOROBUST_DATA" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing dataset-fashion-mnist (Debian)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	  else echo "Fashion-MNIST absent and apt not usable; its tests will be skipped"; fi; \
	fi

# Debian's Chromium for the report's browser test (Playwright drives it: no browser download), when it is missing and
# apt is usable (root); otherwise carry on without it (the test is skipped, naming the package).
browser:
	@if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (Debian) for the report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium; the report's browser test will be skipped"; \
	  else echo "chromium absent and apt not usable; the report's browser test will be skipped (apt-get install chromium)"; fi; \
	fi

# OpenCV's surveillance video vtest.avi from Debian's opencv-doc, for the HOG detector's tests, when it is missing and
# apt is usable (root); otherwise carry on without it (those tests are skipped, naming the package).
video:
	@if [ ! -f $(VTEST) ] && [ -z "$$GEOROBUST_DATA" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing opencv-doc (Debian) for vtest.avi"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc >/dev/null) \
	      || echo "could not install opencv-doc; the tests on vtest.avi will be skipped"; \
	  else echo "vtest.avi absent and apt not usable; the tests on it will be skipped (apt-get install opencv-doc)"; fi; \
	fi

demo: install fmnist
	@if $(PY) -c "import sys; from georobust.data import fashion_mnist as f; sys.exit(0 if f.available() else 1)"; then \
	  echo "== demo: lenet-fmnist on Fashion-MNIST (1,000 test images) =="; \
	  $(BIN)/georobust evaluate --model zoo:lenet-fmnist --data fashion-mnist --limit 1000 --out results/demo --report; \
	else \
	  echo "== demo: Fashion-MNIST is not available here; mlp-digits on the embedded digits =="; \
	  $(BIN)/georobust evaluate --model zoo:mlp-digits --data digits --out results/demo --report; \
	fi
	@echo "== the report: results/demo/report.html (open it in a browser; georobust report results/demo rewrites it) =="

lint: install-test
	$(BIN)/ruff check georobust tests benchmarks repro tools

pytest: install-test
	$(BIN)/pytest -m "slow or not slow"   # everything, the slow peer cross-checks included

test: install-test fmnist browser video lint pytest

bench: install-test
	$(PY) benchmarks/deepfool.py

clean:
	rm -rf results .pytest_cache
