# Every target bootstraps what it needs from python3 + pip alone, so a fresh clone needs no other step.
PYTHON ?= python3
VENV ?= .venv
VENV_AF2 ?= .venv-af2
AIRFLOW_3 ?= apache-airflow>=3.3,<3.4
AIRFLOW_2 ?= apache-airflow>=2.11,<2.12
PIP_FLAGS ?= -q --disable-pip-version-check
PYTEST_ARGS ?=

export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test test-live test-af3 test-af2 lint demo airflow bench chaos e2e clean venv browser-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "==> bootstrapping $(VENV) (Airflow 3.3)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(VENV)/bin/python -m pip install $(PIP_FLAGS) "$(AIRFLOW_3)" -e ".[test,lint]" 2>&1 | grep -v "is ignored" || true
	@$(VENV)/bin/python -c "import airflow, kernel_provider, kernel, starlette, uvicorn, sse_starlette, httpx_sse, pytest"
	@touch $@

$(VENV_AF2)/.installed: pyproject.toml Makefile
	@echo "==> bootstrapping $(VENV_AF2) (Airflow 2.11)"
	@test -x $(VENV_AF2)/bin/python || $(PYTHON) -m venv $(VENV_AF2)
	@$(VENV_AF2)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(VENV_AF2)/bin/python -m pip install $(PIP_FLAGS) "$(AIRFLOW_2)" -e ".[test]" 2>&1 | grep -v "is ignored" || true
	@$(VENV_AF2)/bin/python -c "import airflow, kernel_provider, kernel, starlette, uvicorn, sse_starlette, httpx_sse, pytest"
	@touch $@

## make test: lint + type check, the whole suite on Airflow 3.3, then again on Airflow 2.11.
test: lint browser-deps test-af3 test-af2

## Debian's Chromium for the browser tests (needs root for apt; Playwright never downloads a browser here).
## Without it the browser tests are skipped, and say so in the test summary.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "!! could not install chromium: the browser tests will be skipped"; \
	else echo "!! /usr/bin/chromium missing and not root: the browser tests will be skipped"; fi

lint: $(VENV)/.installed
	@echo "==> ruff"
	@$(VENV)/bin/ruff check kernel_provider tests example_dags bench
	@$(VENV)/bin/ruff format --check kernel_provider tests example_dags bench
	@echo "==> mypy"
	@$(VENV)/bin/mypy

test-af3: $(VENV)/.installed
	@echo "==> pytest on Airflow 3.3"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af3 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-af2: $(VENV_AF2)/.installed
	@echo "==> pytest on Airflow 2.11"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af2 $(VENV_AF2)/bin/python -m pytest -m "not e2e and not e2e_af2 and not browser" $(PYTEST_ARGS)
	@echo "==> end-to-end on a real Airflow 2.11 scheduler + triggerer"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af2 $(VENV_AF2)/bin/python -m pytest -m e2e_af2 tests/e2e $(PYTEST_ARGS)

## make test-live: the provider's assumptions about Kernel's API, checked against the real Kernel (KERNEL_API_KEY;
## optional KERNEL_BASE_URL, KERNEL_LIVE_APP / _ACTION / _PAYLOAD / _VERSION). Two bounded runs, both cancelled.
test-live: $(VENV)/.installed
	@$(VENV)/bin/python -m pytest -m live tests/live -s -p no:cacheprovider $(PYTEST_ARGS)

## make demo: start the emulator with a demo app and run every example DAG on it.
demo: $(VENV)/.installed
	@$(VENV)/bin/python example_dags/run_demo.py

## make airflow: a local Airflow (standalone) + the emulator + the example DAGs, to click through the UI.
airflow: $(VENV)/.installed
	@$(VENV)/bin/python example_dags/run_local_airflow.py

## make bench: benchmarks against the emulator, each side by side with its baseline.
bench: $(VENV)/.installed
	@$(VENV)/bin/python -m pip install $(PIP_FLAGS) -e ".[bench]" 2>&1 | grep -v "is ignored" || true
	@AIRFLOW_HOME=$(CURDIR)/.airflow/bench $(VENV)/bin/python -m bench

## make chaos: 1,000 invocations through the real code paths under injected faults; prints one table.
chaos: $(VENV)/.installed
	@AIRFLOW_HOME=$(CURDIR)/.airflow/chaos $(VENV)/bin/python -m tests.chaos.harness

clean:
	rm -rf $(VENV) $(VENV_AF2) .airflow build *.egg-info
