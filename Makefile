# Every target creates and uses the project-local virtual environment .venv by itself.
# requirements.lock pins every package to the versions the tests last passed with (pip constraints: a package is
# only installed when pyproject.toml asks for it); `make update-lock` re-resolves pyproject.toml's ranges in a
# fresh environment and rewrites it.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: demo test test-slow lint update-lock

$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/localize demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest -q

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

update-lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable > $(LOCK)
	rm -rf .lock-venv
