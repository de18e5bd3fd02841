# Two commands: `make run` (the main job) and `make test`. Both set themselves up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup data browser notebook clean

run: setup
	$(VENV)/bin/alexnet-lab chapter $(ARGS)

# pytest-xdist: two workers of one thread each halve the suite's time on two cores (measured: README).
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS)

setup: $(STAMP) data browser

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Real Fashion-MNIST: Debian's package when apt is there and we are root; otherwise the
# program downloads it from the official mirror on first use (with a checksum check).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "apt could not install dataset-fashion-mnist; alexnet-lab will download the data"; \
	else \
	  echo "Fashion-MNIST not installed system-wide; alexnet-lab downloads it on first use"; \
	fi

# Headless Chromium for the test that renders a run report (tests/test_report.py); skipped without it.
browser:
	@if command -v chromium >/dev/null; then \
	  echo "Chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "apt could not install chromium; the report's browser test will be skipped"; \
	else \
	  echo "Chromium not installed (needs root and apt); the report's browser test will be skipped"; \
	fi

# The chapter as a notebook in JupyterLab (not needed for run/test): its own pinned requirements.
notebook: $(STAMP) $(VENV)/.notebook-installed
	$(VENV)/bin/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/alexnet.ipynb

$(VENV)/.notebook-installed: requirements-notebook.lock
	$(PY) -m pip install --quiet -r requirements-notebook.lock
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
