"""The test harness and developer tooling: real Airflow services around the Kernel emulator.

Harnesses the e2e, browser and cluster tests and the benchmarks start (one :class:`base.AirflowHarness` each):

- ``airflow3``: ``AirflowE2E``, Airflow 3.x (scheduler, dag-processor, triggerer, api-server) on SQLite, REST API v2;
- ``airflow2``: ``Airflow2E2E``, Airflow 2.11 (scheduler, triggerer), read through Airflow's ORM;
- ``airflow_cluster``: ``ClusterAirflow``, PostgreSQL + Redis + CeleryExecutor, two triggerers, two workers;
- ``base`` (what they share, and ``running()``), ``processes``, ``proxy`` (``HoldingProxy``), ``sqlite``,
  ``backing`` (PostgreSQL, Redis) and ``error_audit`` (the ERROR-line audit after every test).

Developer tools, run from the repository root: ``python -m tests.harness.demo`` (``make demo``),
``python -m tests.harness.local_airflow`` (``make airflow``), ``python -m tests.harness.cluster`` (``make cluster``).

Nothing here is collected as a test, and importing it imports no Airflow.
"""
