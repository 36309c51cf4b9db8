"""The task runner the config picks for the per-model downstream runs."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from userip.errors import ConfigError

_EXTRAS = {"dask": "prefect-dask==0.3.7", "ray": "prefect-ray==0.6.0"}


def task_runner(kind: str, workers: int):
    """``thread``: local, one model at a time (each model's fits then use ``workers``
    processes, see ``flows.userip_flow``); ``dask`` / ``ray``: their Prefect integrations
    (prefect-dask is in the lock; prefect-ray is installed separately) with ``workers``
    models side by side, one per worker process, which also reach a cluster
    through their own settings, e.g. ``DaskTaskRunner(address=...)``."""
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=1)
    try:
        if kind == "dask":
            from prefect_dask import DaskTaskRunner

            # one thread per worker process: two fits in threads of one process would share
            # torch's global RNG (LocalCluster's default is cores / workers threads each)
            return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True,
                                                  "threads_per_worker": 1})
        if kind == "ray":
            from prefect_ray import RayTaskRunner

            return RayTaskRunner()
    except ImportError as exc:
        raise ConfigError(f"downstream.task_runner={kind!r} needs `pip install {_EXTRAS[kind]}`") from exc
    raise ConfigError(f"unknown task runner {kind!r}; choose thread, dask or ray")
