# ltvrec: `make demo` runs the whole DAG on synthetic data; `make test` runs the test suite.
# Both create the virtual environment first (.venv/, pinned versions from requirements/lock.txt).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_QUIET := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: venv demo test stack stack-down mlflow-ui airflow-ui compose-check online-retail clean

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

stack: $(STAMP)
	$(VENV)/bin/ltvrec stack up

stack-down: $(STAMP)
	$(VENV)/bin/ltvrec stack down

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

# Separate venv for bench/recbole_sasrec.py (RecBole 1.2.1 needs numpy<2, so pyarrow<26 too; recbole --no-deps skips
# ray/thop/plotly, which only its quick_start/hyper-tuning import).
RECBOLE_VENV := .venv-recbole
.PHONY: recbole-venv
recbole-venv: $(RECBOLE_VENV)/.installed

$(RECBOLE_VENV)/.installed:
	test -x $(RECBOLE_VENV)/bin/python || python3.11 -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0 numpy==1.26.4 pandas==2.3.3 pyarrow==25.0.1 \
	  scipy==1.17.1 scikit-learn==1.9.1 tensorboard==2.21.0 colorlog==4.7.2 colorama==0.4.4 tqdm==4.70.1 pyyaml==6.0.3 \
	  texttable==1.7.2 tabulate==0.10.0 psutil==7.2.2 2>&1 | $(PIP_QUIET)
	$(RECBOLE_VENV)/bin/pip install -q --disable-pip-version-check --no-deps recbole==1.2.1 2>&1 | $(PIP_QUIET)
	touch $@
