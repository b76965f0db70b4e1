# The README's quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# An editable install leaves our modules without bytecode, and with PYTHONDONTWRITEBYTECODE set
# (as on our CI machines) every command compiled them again: ~0.04 s of each start, ~0.1 s of a
# score. A wheel install compiles them; this does the same for the checkout.
COMPILE := $(BIN)/python -m compileall -q facescore_cli

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Install, then score the bundled examples/ into results.csv (local models, no services needed).
demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(COMPILE)
	$(BIN)/facescore batch examples --out results.csv --force
	$(BIN)/facescore score examples/group.jpg

# Install with the test extra and run every test; the tests start their own redis-server and
# ML services on free ports.
test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pytest

# The anchor, ageitgey's face_recognition CLI, without its dlib source build (dlib-bin is ours);
# its weights package imports pkg_resources, which setuptools 81 dropped.
bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps face_recognition
	$(BIN)/python -m pip install --quiet 'setuptools<81'
	$(COMPILE)
	$(BIN)/python bench/bench_batch.py --kind both --repeat 5
	$(BIN)/python bench/bench_startup.py

clean:
	rm -rf $(VENV) results.csv build *.egg-info
