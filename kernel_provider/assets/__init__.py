"""Airflow assets (datasets on Airflow 2) of the Kernel provider: the ``kernel://`` URI scheme."""
