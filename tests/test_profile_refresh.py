"""The nightly refresh on a new dump: items are re-indexed, new users arrive, and only the
users whose history changed get new profiles, on the frozen codebooks and surrogate."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from tests.profile_fixtures import write_tiny_llama
from userip.config import PrepareConfig, ProfileConfig
from userip.dataprep.pipeline import prepare
from userip.profile_infer import infer
from userip.profile_infer.layout import Profile
from userip.profile_infer.refresh import refresh_profiles


def test_refresh_on_a_new_dump(tmp_path: Path) -> None:
    cfg = ProfileConfig(model=str(write_tiny_llama(tmp_path / "llama")), max_target_tokens=12,
                        batch_size=4, warmup_epochs=1, max_epochs=2, explain_users=1)
    old, new = tmp_path / "old", tmp_path / "new"
    prepare(PrepareConfig(source="movielens-100k", max_users=8), old)
    prepare(PrepareConfig(source="movielens-100k", max_users=11), new)
    # the new dump indexes items differently: a frozen surrogate must follow item ids
    def items(d):
        return dict(pl.read_parquet(d / "items.parquet").select("item_id", "item_idx").iter_rows())
    assert items(old) != {k: v for k, v in items(new).items() if k in items(old)}

    base = infer(cfg, old, tmp_path / "base")
    refreshed = refresh_profiles(cfg, base, new, tmp_path / "fresh")
    assert len(refreshed) == 3

    before, after = Profile.read(base), Profile.read(tmp_path / "fresh")
    assert after.user_ids[:8] == before.user_ids and len(after.user_ids) == 11
    assert torch.equal(after.theta[:8], before.theta)
    assert all(torch.equal(x, y) for x, y in zip(after.codebooks, before.codebooks))
    assert after.item_ids == before.item_ids
    assert after.meta.skipped["train_interactions_with_unknown_items"] > 0
    assert not list(tmp_path.glob("fresh.*"))  # work dir and user list cleaned up
    assert refresh_profiles(cfg, tmp_path / "fresh", new, tmp_path / "again") == []
    assert not (tmp_path / "again").exists()
