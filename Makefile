# The two commands a newcomer runs are `make demo` and `make test`; each creates .venv when it is
# missing and installs the project into it (editable, with the dev extra).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint api-golden bench docs clean

install: $(STAMP)

# Reinstall only when the project's own dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sightkit demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(MAKE) docs
	$(PY) -m pytest -n 2 --dist loadfile -q

# The docs site (mkdocs + material + mkdocstrings), built offline with warnings as errors; open runs/site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

api-golden: $(STAMP)
	$(PY) -m sightkit.api --write

bench: $(STAMP)
	$(PY) -m benchmarks all

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
