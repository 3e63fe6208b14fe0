# gptoss-lab: two commands for people (`make lab`, `make test`), and the steps they share.
#
#   make install   .venv with the pinned CPU torch (on a machine without an NVIDIA GPU), the package in
#                  editable mode with its test extras, the CPU MXFP4 engine's kernels built into the cache
#                  (where a C++ compiler exists), and as root the system packages the tests use.
#                  A fast no-op when nothing changed.
#   make test      install + ruff, mypy and every test (all tiers: unit, kernel, sandbox, browser)
#   make lab       install + JupyterLab on the quickstart notebook
#   make bench     install + the benchmarks (figures printed, ratios measured side by side)
#   make nano      install + train gpt-oss-nano from scratch into gptoss_lab/models/nano (about 90 min
#                  on 2 CPU cores; NANO_ARGS passes options, e.g. NANO_ARGS="--steps 300" for a quick look)
#   make nano-eval install + evaluate the shipped nano through the real tool loop (sandbox included)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -qq

# CPU-only machines get this torch first, so that nothing pulls a multi-GB CUDA build later. On this
# project's machines the file lies on local disk; elsewhere add TORCH_INDEX=https://download.pytorch.org/whl/cpu.
# Machines with an NVIDIA GPU keep the torch they have (or get pip's default, a CUDA build).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Debian packages the tests use: bubblewrap (the python tool's sandbox), chromium (browser tests).
SYSTEM_PACKAGES ?= bubblewrap chromium
SYSTEM_COMMANDS ?= bwrap chromium

STAMP := $(VENV)/.gptoss-lab-installed
PYTEST_ARGS ?=

.PHONY: install test lab bench nano nano-eval system-packages clean

install: system-packages $(STAMP)

system-packages:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing system packages ($(SYSTEM_PACKAGES)): missing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "note: missing$$missing; install the Debian packages '$(SYSTEM_PACKAGES)' (as root) for the sandbox and browser tests"; \
	fi

# The JupyterLab extension (labextension/) is built by pip's build hook (hatch-jupyter-builder, npm).
LABEXT_SOURCES := $(wildcard labextension/src/*.ts) labextension/style/index.css labextension/package.json

$(STAMP): pyproject.toml Makefile $(LABEXT_SOURCES)
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node.js 18+) is needed to build the JupyterLab extension: install nodejs and npm"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "gptoss-lab needs Python 3.10 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: keeping the CUDA torch pip chooses"; \
	elif [ "$$(uname -s)" = "Linux" ]; then \
		$(PIP) install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PIP) install -e '.[test,lab]'
	@$(PY) -m gptoss_lab.cpu.build || true
	@touch $@

test: install
	$(PY) -m ruff check gptoss_lab tests benchmarks nano
	$(PY) -m mypy gptoss_lab
	$(PY) -m pytest $(PYTEST_ARGS)

LAB_ARGS ?=

lab: install
	@root=""; [ "$$(id -u)" = "0" ] && root="--allow-root"; \
	cd notebooks && ../$(VENV)/bin/jupyter lab $$root --LabApp.news_url=None $(LAB_ARGS) quickstart.ipynb

bench: install
	@$(PIP) install -e '.[bench]'
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; echo; done

NANO_ARGS ?=

nano: install
	$(PY) -m nano.train $(NANO_ARGS)

nano-eval: install
	$(PY) -m nano.evaluate --json artifacts/nano-eval.json $(NANO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist
