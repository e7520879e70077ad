# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   set up .venv, fetch what the demo needs, run the main job, print where outputs are
#   make test   set up .venv with the dev extras, the test assets and a headless browser, run the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
# torch's CPU build lies on this machine's disk; pinned versions of everything else in constraints.txt.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,text,ui
# Assets the test suite needs (see `ldm assets list`).
TEST_ASSETS ?= lpips efficientnet-lite0 minilm clip-vocab
DEMO_ASSETS ?= lpips
DEMO_OUT ?= outputs/demo
# The web demo's browser test drives Debian's chromium through its chromedriver (selenium comes with the dev extra).
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test install browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)" -c constraints.txt
	$(PIP) install -q -e ".[$(EXTRAS)]" -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

# apt only when one of the two is missing, so a second `make test` installs nothing.
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then \
		echo "browser: $(CHROMIUM) and $(CHROMEDRIVER) are installed"; \
	else \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	fi

# LDMKIT_REQUIRE_BROWSER=1: a missing browser fails the browser test instead of skipping it.
test: install browser
	$(if $(strip $(TEST_ASSETS)),$(VENV)/bin/ldm assets fetch $(TEST_ASSETS))
	LDMKIT_REQUIRE_BROWSER=1 $(VENV)/bin/pytest

demo: install
	$(if $(strip $(DEMO_ASSETS)),$(VENV)/bin/ldm assets fetch $(DEMO_ASSETS))
	$(VENV)/bin/ldm demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) outputs runs
