# make demo: set up .venv and explain a bundled photo with the embedded default model.
# make test: install everything the tests need (Python extras, headless Chromium) and run them.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_OUT ?= cameras-out

.PHONY: demo test lint bench system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Everything the tests need, at the exact versions of constraints.txt; reinstalls whenever
# pyproject.toml or constraints.txt changes.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,keras,ray]'
	touch $@

# The demo: the core (what `cameras explain` needs) and the eval extra, whose
# scikit-image ships the demo photo; the same pinned versions.
$(VENV)/.demo: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[eval]'
	touch $@

demo: $(VENV)/.demo
	@mkdir -p $(DEMO_OUT)
	$(BIN)/python -c "from PIL import Image; from skimage import data; Image.fromarray(data.chelsea()).save('$(DEMO_OUT)/chelsea.jpg')"
	$(BIN)/cameras explain $(DEMO_OUT)/chelsea.jpg --out $(DEMO_OUT)
	@echo "wrote $(DEMO_OUT)/chelsea.jpg (the photo), chelsea_cameras.png (overlay), chelsea_cameras.npy (map)"
	@echo "the cameras command is $(BIN)/cameras; or run '. $(BIN)/activate' once to type just 'cameras'"

# Debian packages the tests use: Chromium for the browser test, opencv-doc's photos for
# the evaluation set. Installed when missing and when we may (root); otherwise said.
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium chromium-driver"; \
	[ -d /usr/share/doc/opencv-doc ] || missing="$$missing opencv-doc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install$$missing (apt-get) for the browser and evaluation-set tests"; fi; \
	fi

test: $(VENV)/.installed system-deps
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/speed_memory.py
