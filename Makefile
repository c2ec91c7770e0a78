# Two commands do all the set-up: `make demo` and `make test` create .venv with the pinned set when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint docs dist venv clean

$(STAMP): requirements.txt requirements-test.txt requirements-docs.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt -r requirements-docs.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dpdiff demo --output runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# ruff (lint + format check), mypy and the import contract (.importlinter); every tool runs, then the
# target fails if any of them failed. Settings: [tool.ruff] and [tool.mypy] in pyproject.toml.
lint: $(STAMP)
	@status=0; \
	for cmd in "ruff check ." "ruff format --check --output-format concise ." "mypy dpdiff" "lint-imports --no-cache"; do \
		echo "+ $$cmd"; $(VENV)/bin/$$cmd || status=1; \
	done; \
	exit $$status

# The documentation site (mkdocs.yml, docs/) into site/, offline: `--strict` makes every warning an error, broken
# internal links and anchors included (mkdocs.yml `validation:`); the Markdown outside docs/ (README, CONTRIBUTING,
# CHANGELOG) is checked by tools/check_md_links.py, since MkDocs does not read it.
docs: $(STAMP)
	$(PY) tools/check_md_links.py README.md CONTRIBUTING.md CHANGELOG.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# sdist + wheel into dist/, built with the pinned setuptools of .venv (offline: no isolated build
# environment is downloaded), then checked with twine. tests/test_packaging.py installs such a wheel.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

clean:
	rm -rf $(VENV) runs dist site
