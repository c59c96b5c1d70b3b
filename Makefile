# Every target bootstraps what it needs from python3 + pip alone, so a fresh clone needs no other step.
PYTHON ?= python3
VENV ?= .venv
VENV_AF2 ?= .venv-af2
AIRFLOW_3 ?= apache-airflow>=3.3,<3.4
AIRFLOW_2 ?= apache-airflow>=2.11,<2.12
PIP_FLAGS ?= -q --disable-pip-version-check
# Venvs are built with uv (from PyPI, into .tools/): it resolves like pip and installs the same packages, in
# seconds instead of minutes. Bytecode is compiled at install, as pip does, since PYTHONDONTWRITEBYTECODE is set.
UV_SPEC ?= uv>=0.9,<1
UV := .tools/bin/uv
UV_INSTALL = $(UV) pip install -q --compile-bytecode
# Airflow 2.11.2 (and 3.1.8, .ci/pins-af31.txt) set an attribute on cryptography's MultiFernet, which cryptography 51
# forbids: every connection read fails with "AttributeError ... is_encrypted" once a Fernet key is set. Airflow's
# constraints pin an older cryptography; those files were not reachable from here, so this is the bound found
# working (50.0.2 checked on 2.11.2).
CRYPTOGRAPHY_AF2 ?= cryptography<51
PYTEST_ARGS ?=
# pytest-xdist per leg: each worker has its own AIRFLOW_HOME (tests/conftest.py); a test file stays on one worker
# and so do the e2e files, which share one Airflow harness (tests/conftest.py), so it starts once per leg. The legs
# mostly wait, so workers outnumber cores.
XDIST ?= -n 3 --dist loadfile --durations=15
IMPORT_CHECK = -c "import airflow, kernel_provider, kernel, starlette, uvicorn, sse_starlette, httpx_sse, pytest, xdist" >/dev/null

export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test test-fast test-free test-free-floors test-floors test-live test-af3 test-af2 test-af30 test-af31 \
	test-af31-unit test-af32 test-matrix lint demo airflow bench chaos e2e clean venv deps system-deps browser-deps \
	cluster cluster-deps test-cluster docs release-check

venv: $(VENV)/.installed

$(UV):
	@echo "==> installing uv into .tools"
	@$(PYTHON) -m pip install $(PIP_FLAGS) --target .tools "$(UV_SPEC)" 2>&1 | grep -v "is ignored\|Running pip as the 'root'" || true
	@test -x $@

$(VENV)/.installed: pyproject.toml Makefile | $(UV)
	@echo "==> bootstrapping $(VENV) (Airflow 3.3)"
	@test -x $(VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	@$(UV_INSTALL) --python $(VENV)/bin/python "$(AIRFLOW_3)" -e ".[test,lint,docs,openlineage]"
	@$(VENV)/bin/python $(IMPORT_CHECK)
	@touch $@

$(VENV_AF2)/.installed: pyproject.toml Makefile | $(UV)
	@echo "==> bootstrapping $(VENV_AF2) (Airflow 2.11)"
	@test -x $(VENV_AF2)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV_AF2)
	@$(UV_INSTALL) --python $(VENV_AF2)/bin/python "$(AIRFLOW_2)" "$(CRYPTOGRAPHY_AF2)" -e ".[test,openlineage]"
	@$(VENV_AF2)/bin/python $(IMPORT_CHECK)
	@touch $@

## .venv-floors: Airflow 3.3 with every direct dependency at the floor pyproject.toml declares (.ci/floors.txt).
.venv-floors/.installed: pyproject.toml .ci/floors.txt | $(UV)
	@echo "==> bootstrapping $(@D) (Airflow 3.3, every direct dependency at its floor)"
	@test -x $(@D)/bin/python || $(UV) venv -q --python $(PYTHON) $(@D)
	@$(UV_INSTALL) --python $(@D)/bin/python -c .ci/floors.txt "$(AIRFLOW_3)" -e ".[test]"
	@$(@D)/bin/python $(IMPORT_CHECK)
	@touch $@

## .venv-af30, .venv-af31, .venv-af32: Airflow 3.0 / 3.1 / 3.2, installed with the pins in .ci/pins-af3N.txt
## (the exact Airflow patch and what that patch needs pinned; see the comments there).
.venv-af3%/.installed: pyproject.toml .ci/pins-af3%.txt | $(UV)
	@echo "==> bootstrapping $(@D) ($$(grep '^apache-airflow==' .ci/pins-af3$*.txt))"
	@test -x $(@D)/bin/python || $(UV) venv -q --python $(PYTHON) $(@D)
	@$(UV_INSTALL) --python $(@D)/bin/python -c .ci/pins-af3$*.txt apache-airflow -e ".[test]"
	@$(@D)/bin/python $(IMPORT_CHECK)
	@touch $@

# The suite on one Airflow 3.0-3.2 venv ($(1) = the minor version's digit); browser tests run on 3.3 only, and
# the Airflow-free tests once per dependency set (make test-free).
AF3X_MARKS ?= not airflow_free and not e2e_af2 and not browser
define pytest_af3x
	@echo "==> pytest on $$(grep '^apache-airflow==' .ci/pins-af3$(1).txt) ($(AF3X_MARKS))"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af3$(1) .venv-af3$(1)/bin/python -m pytest $(XDIST) -m "$(AF3X_MARKS)" $(PYTEST_ARGS)
endef

test-af30: .venv-af30/.installed
	$(call pytest_af3x,0)

test-af31: .venv-af31/.installed
	$(call pytest_af3x,1)

test-af32: .venv-af32/.installed
	$(call pytest_af3x,2)

## make test-af31-unit: Airflow 3.1 without its e2e (make test's leg; make test-matrix runs 3.1 in full).
test-af31-unit:
	@$(MAKE) --no-print-directory test-af31 AF3X_MARKS="not airflow_free and not e2e and not e2e_af2 and not browser"

## make test-floors: the unit suite (no e2e, browser, cluster or live tests) on the dependency floors, so that a
## floor the code has outgrown fails here (its Airflow-free part: make test-free-floors). Its mapped fan-out is 30
## wide, as on 3.0-3.2: the 100-wide one runs on Airflow 3.3 and 2.11, and 30 meets Kernel's limit just as surely.
FLOORS_MARKS ?= not airflow_free and not e2e and not e2e_af2 and not browser and not cluster and not chromium and not live and not chaos
test-floors: .venv-floors/.installed
	@echo "==> pytest on the dependency floors (.ci/floors.txt; $(FLOORS_MARKS))"
	@KERNEL_FANOUT_N=30 AIRFLOW_HOME=$(CURDIR)/.airflow/floors .venv-floors/bin/python -m pytest $(XDIST) -m "$(FLOORS_MARKS)" $(PYTEST_ARGS)

## make test-free: the Airflow-free tests (client core, emulator, layout; marker airflow_free) with Airflow made
## unimportable; make test-free-floors: the same on the dependency floors. They run once per dependency set, not
## once per Airflow version.
FREE_MARKS ?= airflow_free and not live
test-free: $(VENV)/.installed
	@echo "==> Airflow-free tests (Airflow blocked)"
	@$(VENV)/bin/python -m pytest -p tests.block_airflow -n 2 --dist loadfile -m "$(FREE_MARKS)" $(PYTEST_ARGS)

test-free-floors: .venv-floors/.installed
	@echo "==> Airflow-free tests on the dependency floors (Airflow blocked)"
	@.venv-floors/bin/python -m pytest -p tests.block_airflow -n 2 --dist loadfile -m "$(FREE_MARKS) and not chromium" $(PYTEST_ARGS)

## make test-matrix: the suite on every supported Airflow minor (2.11, 3.0, 3.1, 3.2, 3.3), side by side.
test-matrix: system-deps $(VENV)/.cluster-installed $(VENV_AF2)/.installed .venv-af30/.installed .venv-af31/.installed .venv-af32/.installed
	@$(PYTHON) .ci/legs.py -j 4 test-af3 test-af32 test-af31 test-af30 test-af2 test-free@5

## make test: lint + type check, the Airflow-free tests, the whole suite on Airflow 3.3 (browser and cluster
## suites included), on Airflow 2.11 (its own e2e included), the unit suite on the dependency floors and on
## Airflow 3.1 without its e2e. The venvs and system packages are installed first, then the legs run side by side
## (.ci/legs.py prints each leg's output as it ends, and a table of wall times). The two longest legs (3.3, 3.1) run at
## normal priority, the others a little nicer (@N), so they get the CPU first when the legs compete.
test: deps
	@$(PYTHON) .ci/legs.py test-af3 test-af31-unit test-af2@2 test-floors@2 test-free@5 test-free-floors@5 lint@10 \
		docs@10 release-check@10

## make test-fast: the edit-run loop: the Airflow-free tests and the unit tests on Airflow 3.3 (no e2e, browser,
## cluster, Chromium, chaos or live tests).
FAST_MARKS ?= not e2e and not e2e_af2 and not browser and not cluster and not chromium and not live and not chaos
test-fast: $(VENV)/.installed
	@echo "==> fast tests on Airflow 3.3 ($(FAST_MARKS))"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/fast $(VENV)/bin/python -m pytest -n 4 --dist loadfile -m "$(FAST_MARKS)" $(PYTEST_ARGS)

## make deps: every venv make test needs and the system packages, installed side by side.
deps:
	@$(MAKE) --no-print-directory -j5 system-deps $(VENV)/.cluster-installed $(VENV_AF2)/.installed \
		.venv-floors/.installed .venv-af31/.installed

## Debian's Chromium (browser tests), PostgreSQL and Redis (cluster tests): what is missing, in one apt run
## (needs root). Without them those tests are skipped, and say so in the test summary.
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing Debian's$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "!! could not install$$missing: the tests that need it will be skipped"; \
	else echo "!!$$missing missing and not root: the tests that need it will be skipped"; fi

## Debian's Chromium for the browser tests (needs root for apt; Playwright never downloads a browser here).
browser-deps:
	@$(MAKE) --no-print-directory system-deps

## make docs: the documentation site (mkdocs.yml, pages in docs/) into build/site; any warning (a broken link or
## anchor, a missing include) fails it.
docs: $(VENV)/.installed
	@echo "==> docs (mkdocs --strict)"
	@NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

## make release-check: the package as a pip user gets it. Builds the sdist and the wheel, `twine check --strict`,
## installs the wheel (not editable) with its [emulator] extra in a fresh venv with the newest supported Airflow,
## and from that install runs `airflow providers get`, `kernel-emulator --help` and the README's Quickstart
## (tests/test_readme_quickstart.py, its bash block pointed at that venv by KERNEL_QUICKSTART_BIN).
RELEASE_VENV ?= .venv-release
release-check: $(VENV)/.installed
	@echo "==> release check: sdist + wheel, twine check, the wheel in a clean venv"
	@rm -rf build/dist $(RELEASE_VENV) .airflow/release
	@$(UV) build -q --out-dir build/dist
	@$(VENV)/bin/twine check --strict build/dist/*
	@$(UV) venv -q --python $(PYTHON) $(RELEASE_VENV)
	@$(UV) pip install -q --python $(RELEASE_VENV)/bin/python "$(AIRFLOW_3)" "$$(ls build/dist/*.whl)[emulator]"
	@$(RELEASE_VENV)/bin/python -I -c "import kernel_provider as k; assert '/site-packages/' in k.__file__, k.__file__"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/release $(RELEASE_VENV)/bin/airflow providers get airflow-provider-kernel
	@$(RELEASE_VENV)/bin/kernel-emulator --help >/dev/null
	@KERNEL_QUICKSTART_BIN=$(CURDIR)/$(RELEASE_VENV)/bin AIRFLOW_HOME=$(CURDIR)/.airflow/release \
		$(VENV)/bin/python -m pytest -p no:cacheprovider -q -m e2e tests/test_readme_quickstart.py $(PYTEST_ARGS)

lint: $(VENV)/.installed
	@echo "==> ruff"
	@$(VENV)/bin/ruff check kernel_provider tests example_dags bench .ci
	@$(VENV)/bin/ruff format --check kernel_provider tests example_dags bench .ci
	@echo "==> mypy"
	@$(VENV)/bin/mypy

test-af3: $(VENV)/.installed
	@echo "==> pytest on Airflow 3.3"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af3 $(VENV)/bin/python -m pytest $(XDIST) -m "not airflow_free" $(PYTEST_ARGS)

test-af2: $(VENV_AF2)/.installed
	@echo "==> pytest on Airflow 2.11 (its own e2e on a real scheduler + triggerer included)"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/af2 $(VENV_AF2)/bin/python -m pytest $(XDIST) -m "not airflow_free and not e2e and not browser" $(PYTEST_ARGS)

## make test-live: the provider's assumptions about Kernel's API, checked against the real Kernel (KERNEL_API_KEY;
## optional KERNEL_BASE_URL, KERNEL_LIVE_APP / _ACTION / _PAYLOAD / _VERSION). Two bounded runs, both cancelled.
test-live: $(VENV)/.installed
	@$(VENV)/bin/python -m pytest -m live tests/live -s -p no:cacheprovider $(PYTEST_ARGS)

## make demo: start the emulator with a demo app and run every example DAG on it.
demo: $(VENV)/.installed
	@$(VENV)/bin/python -m tests.harness.demo

## make airflow: a local Airflow (standalone) + the emulator + the example DAGs, to click through the UI.
airflow: $(VENV)/.installed
	@$(VENV)/bin/python -m tests.harness.local_airflow

## The [cluster] extra (Celery provider, psycopg2, asyncpg, redis) in .venv, and Debian's PostgreSQL and Redis
## (system-deps; needs root for apt; without them the cluster tests are skipped, and say so in the test summary).
cluster-deps: $(VENV)/.cluster-installed
	@$(MAKE) --no-print-directory system-deps

$(VENV)/.cluster-installed: $(VENV)/.installed
	@$(UV_INSTALL) --python $(VENV)/bin/python "$(AIRFLOW_3)" -e ".[cluster]"
	@$(VENV)/bin/python -c "import airflow.providers.celery.executors.celery_executor, psycopg2, asyncpg, redis"
	@touch $@

## make cluster: PostgreSQL + Redis + Airflow with the CeleryExecutor (api-server, scheduler, dag-processor, two
## triggerers, two Celery workers) + the emulator, on 127.0.0.1 in a throw-away directory. Ctrl-C stops all.
cluster: cluster-deps
	@$(VENV)/bin/python -m tests.harness.cluster

## make test-cluster: the cluster suite (tests/cluster, marker `cluster`) on one shared cluster; ~5 minutes on 2 cores.
test-cluster: cluster-deps
	@echo "==> cluster tests: PostgreSQL + Redis + CeleryExecutor, two triggerers, two workers"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/cluster $(VENV)/bin/python -m pytest -m cluster tests/cluster -p no:cacheprovider $(PYTEST_ARGS)

## make bench: benchmarks against the emulator, each side by side with its baseline.
bench: $(VENV)/.installed
	@$(UV_INSTALL) --python $(VENV)/bin/python "$(AIRFLOW_3)" -e ".[bench]"
	@AIRFLOW_HOME=$(CURDIR)/.airflow/bench $(VENV)/bin/python -m bench

## make chaos: 1,000 invocations through the real code paths under injected faults; prints one table.
chaos: $(VENV)/.installed
	@AIRFLOW_HOME=$(CURDIR)/.airflow/chaos $(VENV)/bin/python -m tests.chaos.harness

clean:
	rm -rf $(VENV) $(VENV_AF2) .venv-floors .venv-af30 .venv-af31 .venv-af32 $(RELEASE_VENV) .tools .airflow build *.egg-info
