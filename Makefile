# ltvrec: `make demo` runs the whole DAG on synthetic data; `make test` runs the test suite.
# Both create the virtual environment first (.venv/, pinned versions from requirements/lock.txt).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_QUIET := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: venv demo test mlflow-ui airflow-ui compose-check online-retail clean

venv: $(STAMP)

$(STAMP): requirements/lock.txt requirements/test.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/lock.txt -r requirements/test.txt 2>&1 | $(PIP_QUIET)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | $(PIP_QUIET)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ltvrec demo

test: $(STAMP)
	$(PY) -m pytest -q

online-retail: $(STAMP)
	$(VENV)/bin/ltvrec run --source online_retail --path ../shared/data/online_retail_II.parquet

mlflow-ui: $(STAMP)
	$(VENV)/bin/ltvrec ui mlflow

airflow-ui: $(STAMP)
	$(VENV)/bin/ltvrec ui airflow

compose-check:
	bash .ci/validate_compose.sh

clean:
	rm -rf .ltvrec
