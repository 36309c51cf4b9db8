"""Prefect cache records are JSON paths; a planted pickle record never runs code.

Records are written by Prefect's own ``ResultStore`` into the local result storage, as a
task run writes them; ``refuse_foreign_record`` is what each stage task's cache key
function runs before Prefect looks the key up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer, PickleSerializer
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from userip.tasks.stages import RESULT_SERIALIZER, prepare_task, refuse_foreign_record


class _Planted:
    """Unpickling this creates a folder: proof that the record ran code."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (os.mkdir, (str(self.proof),))


@pytest.fixture()
def storage(tmp_path: Path):
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "storage"}):
        yield tmp_path / "storage"


def test_stage_tasks_persist_plain_json() -> None:
    assert prepare_task.result_serializer is RESULT_SERIALIZER
    assert RESULT_SERIALIZER.object_decoder is None and RESULT_SERIALIZER.type == "json"


@pytest.mark.slow  # a subprocess or server start: seconds to minutes
def test_our_record_is_kept_and_reads_back(storage: Path) -> None:
    store = ResultStore(serializer=RESULT_SERIALIZER)
    store.write(key="k1", obj="/runs/demo/data/abc")
    refuse_foreign_record("k1")
    assert store.exists("k1") and store.read("k1").result == "/runs/demo/data/abc"


@pytest.mark.parametrize("serializer", [
    PickleSerializer(),
    JSONSerializer(),  # Prefect's default decoder imports classes the record names
    JSONSerializer(object_decoder="os.system"),
])
def test_a_planted_record_is_moved_aside_and_runs_nothing(storage: Path, tmp_path: Path,
                                                          serializer) -> None:
    proof = tmp_path / "pwned"
    payload = _Planted(proof) if isinstance(serializer, PickleSerializer) else "/x"
    ResultStore(serializer=serializer).write(key="k1", obj=payload)
    assert (storage / "k1").is_file() and not proof.exists()
    refuse_foreign_record("k1")
    assert not (storage / "k1").exists() and (storage / "k1.refused").is_file()
    assert not ResultStore(serializer=RESULT_SERIALIZER).exists("k1")  # a miss: recompute
    assert not proof.exists()
