"""Prefect flows: the ``userip`` pipeline DAG."""
