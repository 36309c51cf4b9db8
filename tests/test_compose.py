"""docker/compose.yaml: no host interface but loopback, cache records inside a volume."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker" / "compose.yaml").read_text())


def test_every_published_port_is_loopback_only() -> None:
    ports = [p for svc in COMPOSE["services"].values() for p in svc.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports


def test_cache_records_live_inside_a_mounted_volume() -> None:
    worker = COMPOSE["services"]["worker"]
    storage = worker["environment"]["PREFECT_LOCAL_STORAGE_PATH"]
    mounts = [v.split(":")[1] for v in worker["volumes"]]
    assert any(storage == m or storage.startswith(m.rstrip("/") + "/") for m in mounts), (storage, mounts)
