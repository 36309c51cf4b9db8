"""Shared fixtures: real data sets prepared once per test session, one Prefect server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prefect_stack import prefect_server
from tests.profile_fixtures import write_tiny_llama
from userip.config import PrepareConfig
from userip.dataprep.pipeline import prepare


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100K, prepared for real with the default settings."""
    out = tmp_path_factory.mktemp("ml100k") / "data"
    prepare(PrepareConfig(source="movielens-100k"), out)
    return out


@pytest.fixture(scope="session")
def ml100k_small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 MovieLens-100K users with short behaviour texts: real data, tiny runs."""
    out = tmp_path_factory.mktemp("ml100k_small") / "data"
    prepare(PrepareConfig(source="movielens-100k", max_users=40), out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 2-layer random-weight Llama with SmolLM2's tokenizer, written once per session."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """The API URL of one real Prefect server on loopback, shared by the end-to-end tests
    (a server start migrates a fresh database: tens of seconds on a busy 2-core box)."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url
