# Every target bootstraps what it needs from python3 + pip alone, so a fresh clone needs no other step.
PYTHON ?= python3
VENV ?= .venv
VENV_AF2 ?= .venv-af2
AIRFLOW_3 ?= apache-airflow>=3.3,<3.4
AIRFLOW_2 ?= apache-airflow>=2.11,<2.12
PIP_FLAGS ?= -q --disable-pip-version-check
# Airflow 2.11.2 (and 3.1.8, .ci/pins-af31.txt) set an attribute on cryptography's MultiFernet, which cryptography 51
# forbids: every connection read fails with "AttributeError ... is_encrypted" once a Fernet key is set. Airflow's
# constraints pin an older cryptography; those files were not reachable from here, so this is the bound found
# working (50.0.2 checked on 2.11.2).
CRYPTOGRAPHY_AF2 ?= cryptography<51
PYTEST_ARGS ?=

export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test test-floors test-live test-af3 test-af2 test-af30 test-af31 test-af32 test-matrix lint demo airflow bench chaos e2e clean venv browser-deps cluster cluster-deps test-cluster

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
	@$(VENV_AF2)/bin/python -m pip install $(PIP_FLAGS) "$(AIRFLOW_2)" "$(CRYPTOGRAPHY_AF2)" -e ".[test]" 2>&1 | grep -v "is ignored" || true
	@$(VENV_AF2)/bin/python -c "import airflow, kernel_provider, kernel, starlette, uvicorn, sse_starlette, httpx_sse, pytest"
	@touch $@

## .venv-floors: Airflow 3.3 with every direct dependency at the floor pyproject.toml declares (.ci/floors.txt).
.venv-floors/.installed: pyproject.toml .ci/floors.txt
	@echo "==> bootstrapping $(@D) (Airflow 3.3, every direct dependency at its floor)"
	@test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	@$(@D)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(@D)/bin/python -m pip install $(PIP_FLAGS) -c .ci/floors.txt "$(AIRFLOW_3)" -e ".[test]" 2>&1 | grep -v "is ignored" || true
	@$(@D)/bin/python -c "import airflow, kernel_provider, kernel, starlette, uvicorn, sse_starlette, httpx_sse, pytest"
	@touch $@

## .venv-af30, .venv-af31, .venv-af32: Airflow 3.0 / 3.1 / 3.2, installed with the pins in .ci/pins-af3N.txt
## (the exact Airflow patch and what that patch needs pinned; see the comments there).
.venv-af3%/.installed: pyproject.toml .ci/pins-af3%.txt
	@echo "==> bootstrapping $(@D) ($$(grep '^apache-airflow==' .ci/pins-af3$*.txt))"
	@test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	@$(@D)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(@D)/bin/python -m pip install $(PIP_FLAGS) -c .ci/pins-af3$*.txt apache-airflow -e ".[test]" 2>&1 | grep -v "is ignored" || true
	@$(@D)/bin/python -c "import airflow, kernel_provider, kernel, starlette, uvicorn, sse_starlette, httpx_sse, pytest"
	@touch $@

# The suite on one Airflow 3.0-3.2 venv ($(1) = the minor version's digit); browser tests run on 3.3 only.
# AF3X_MARKS narrows it (make test runs 3.1 without the e2e tests, to stay well inside CI's time).
AF3X_MARKS ?= not e2e_af2 and not browser
define pytest_af3x
	@echo "==> pytest on $$(grep '^apache-airflow==' .ci/pins-af3$(1).txt) ($(AF3X_MARKS))"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af3$(1) .venv-af3$(1)/bin/python -m pytest -m "$(AF3X_MARKS)" $(PYTEST_ARGS)
endef

test-af30: .venv-af30/.installed
	$(call pytest_af3x,0)

test-af31: .venv-af31/.installed
	$(call pytest_af3x,1)

test-af32: .venv-af32/.installed
	$(call pytest_af3x,2)

## make test-floors: the unit suite (no e2e, browser, cluster or live tests) on the dependency floors, so that a
## floor the code has outgrown fails here.
FLOORS_MARKS ?= not e2e and not e2e_af2 and not browser and not cluster and not chromium and not live and not chaos
test-floors: .venv-floors/.installed
	@echo "==> pytest on the dependency floors (.ci/floors.txt; $(FLOORS_MARKS))"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/floors .venv-floors/bin/python -m pytest -m "$(FLOORS_MARKS)" $(PYTEST_ARGS)

## make test-matrix: the suite on every supported Airflow minor: 2.11, 3.0, 3.1, 3.2 and 3.3.
test-matrix: test-af2 test-af30 test-af31 test-af32 test-af3

## make test: lint + type check; the whole suite on Airflow 3.3 (browser and cluster suites included), on
## Airflow 2.11 (its own e2e included), the unit suite on the dependency floors, and on Airflow 3.1 without its e2e
## (to stay well inside CI's time).
## make test-matrix runs all five versions, 3.0-3.2 with their e2e.
test: lint browser-deps cluster-deps test-af3 test-af2 test-floors
	@$(MAKE) --no-print-directory test-af31 AF3X_MARKS="not e2e and not e2e_af2 and not browser"

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

## Debian's PostgreSQL and Redis for the cluster (needs root for apt; without them the cluster tests are skipped,
## and say so in the test summary), and the [cluster] extra (Celery provider, psycopg2, asyncpg, redis) in .venv.
cluster-deps: $(VENV)/.cluster-installed
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing Debian's postgresql and redis-server for the cluster"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null) \
	    || echo "!! could not install postgresql/redis-server: the cluster tests will be skipped"; \
	else echo "!! PostgreSQL or redis-server missing and not root: the cluster tests will be skipped"; fi

$(VENV)/.cluster-installed: $(VENV)/.installed
	@$(VENV)/bin/python -m pip install $(PIP_FLAGS) "$(AIRFLOW_3)" -e ".[cluster]" 2>&1 | grep -v "is ignored" || true
	@$(VENV)/bin/python -c "import airflow.providers.celery.executors.celery_executor, psycopg2, asyncpg, redis"
	@touch $@

## make cluster: PostgreSQL + Redis + Airflow with the CeleryExecutor (api-server, scheduler, dag-processor, two
## triggerers, two Celery workers) + the emulator, on 127.0.0.1 in a throw-away directory. Ctrl-C stops all.
cluster: cluster-deps
	@$(VENV)/bin/python example_dags/run_cluster.py

## make test-cluster: the cluster suite (tests/cluster, marker `cluster`) on one shared cluster; ~5 minutes on 2 cores.
test-cluster: cluster-deps
	@echo "==> cluster tests: PostgreSQL + Redis + CeleryExecutor, two triggerers, two workers"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/cluster $(VENV)/bin/python -m pytest -m cluster tests/cluster -p no:cacheprovider $(PYTEST_ARGS)

## make bench: benchmarks against the emulator, each side by side with its baseline.
bench: $(VENV)/.installed
	@$(VENV)/bin/python -m pip install $(PIP_FLAGS) -e ".[bench]" 2>&1 | grep -v "is ignored" || true
	@AIRFLOW_HOME=$(CURDIR)/.airflow/bench $(VENV)/bin/python -m bench

## make chaos: 1,000 invocations through the real code paths under injected faults; prints one table.
chaos: $(VENV)/.installed
	@AIRFLOW_HOME=$(CURDIR)/.airflow/chaos $(VENV)/bin/python -m tests.chaos.harness

clean:
	rm -rf $(VENV) $(VENV_AF2) .venv-floors .venv-af30 .venv-af31 .venv-af32 .airflow build *.egg-info
