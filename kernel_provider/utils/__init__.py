"""Airflow-side helpers shared by the operators, the sensor and the triggers: the run record, how a task
completes from a finished wait, and secret masking."""
