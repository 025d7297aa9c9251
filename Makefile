# `make demo` and `make test` are the two entry points; both install first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned for local installs (the version the tests were run with). Which build arrives is
# pip's choice: on Linux PyPI serves the CUDA build; for the CPU-only one run e.g.
# `PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install TORCH_SPEC=torch==2.13.0+cpu`.
# `make install TORCH_SPEC="torch>=2.1"` keeps whatever torch a machine already has.
TORCH_SPEC ?= torch==2.13.0
REQUIREMENTS := requirements.txt requirements-dev.txt
# The stamp's name carries a hash of what was installed, so editing a requirement file
# (or TORCH_SPEC) reinstalls, and an unchanged one makes `make install` a no-op.
INSTALL_HASH := $(shell cat $(REQUIREMENTS) | sha256sum | cut -c1-16)-$(shell echo '$(TORCH_SPEC)' | sha256sum | cut -c1-8)
STAMP := $(VENV)/.installed-$(INSTALL_HASH)
# tiktoken names its cache file sha1(url of r50k_base.tiktoken); see scripts/prepare_tokenizer.py.
TOKENIZER_CACHE := .cache/tiktoken/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4

.PHONY: install test lint demo bench clean distclean

install: $(STAMP) $(TOKENIZER_CACHE)

$(STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	rm -f $(VENV)/.installed-*
	touch $@

$(TOKENIZER_CACHE): | $(STAMP)
	$(PY) scripts/prepare_tokenizer.py

lint: install
	$(PY) -m ruff check .

# Lint and tests both run, so a lint error does not hide test results; either failing fails.
# The tests run in parallel (pytest-xdist): one worker per core (`auto`), idle workers
# taking queued tests from busy ones (worksteal). `make test PYTEST_WORKERS=0` runs them in
# this one process instead.
PYTEST_WORKERS ?= auto
test: install
	@$(PY) -m ruff check .; lint=$$?; \
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal; tests=$$?; \
	if [ $$lint -ne 0 ]; then echo "make test: ruff check failed (see above)" >&2; fi; \
	exit $$(( lint != 0 ? lint : tests ))

demo: install
	$(PY) scripts/demo_notebook.py

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf .pytest_cache .ruff_cache .cache/data outputs
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
