"""The baselines on the project's own prepared split (real MovieLens-100K, 40 users) and its
new-users protocol: the draws, the prompts' histories, and `userip baselines --data` runs of
the tiny random Llama (SmolLM2's tokenizer) that keep every finished method in the tables."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from userip.baselines.config import SameDataConfig
from userip.baselines.same_data import collm_rows, mf_parts, select, tallrec_samples
from userip.baselines.suite import our_split
from userip.cli import main as cli_main
from userip.downstream.suite import hold_out_users

DRAW = SameDataConfig(test_samples=30, new_user_samples=10, history=4)


def test_training_rows_leave_the_new_users_out_and_every_method_scores_the_same_rows(ml100k_small_dir: Path):
    ours = our_split(ml100k_small_dir, None, 0.2, 0)
    held = set(ours.data.held_out)
    assert held == set(hold_out_users(ml100k_small_dir, 0.2, 0)) and len(held) == 8
    split = select(ours.data, DRAW, 20, 10)
    assert (split.train.height, split.valid.height) == (20, 10)
    assert not (set(split.train["user_id"]) | set(split.valid["user_id"])) & held
    assert set(split.train["split"]) == {"train"} and set(split.test["split"]) == {"test"}
    assert split.test["scored_all"].sum() == 30
    assert set(split.test.filter(pl.col("new_user"))["user_id"]) <= held
    assert split.test["new_user"].sum() >= 10  # the new users' own draw, plus any in the all-users draw
    assert select(ours.data, DRAW, 4, 8).test.equals(split.test)  # the test rows do not move with K
    mf = mf_parts(ours.data)
    assert not set(mf["train"]["user_id"]) & held and set(mf["test"]["user_id"]) >= held


def test_a_prompt_lists_the_users_latest_train_items_but_the_target_oldest_first(ml100k_small_dir: Path):
    ours = our_split(ml100k_small_dir, None, 0.2, 0)
    split = select(ours.data, DRAW, 20, 10)
    inter = pl.read_parquet(ml100k_small_dir / "interactions.parquet").with_columns(
        pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String))
    titles = dict(pl.read_parquet(ml100k_small_dir / "items.parquet").select(
        pl.col("item_id").cast(pl.String), "title").iter_rows())
    for frame in (split.train, split.test):
        for row in frame.head(6).iter_rows(named=True):
            mine = (inter.filter((pl.col("user_id") == row["user_id"]) & (pl.col("split") == "train")
                                 & (pl.col("item_id") != row["item_id"]))
                    .sort(["ts", "item_id"], descending=[True, False]).head(4).reverse())
            assert row["history_title"] == [titles[i] for i in mine["item_id"]]
            assert row["history_liked"] == [bool(v) for v in mine["label"]]
    sample = tallrec_samples(split.test.head(1))[0]
    row = split.test.row(0, named=True)
    liked = [t for t, ok in zip(row["history_title"], row["history_liked"]) if ok]
    assert sample.input.startswith("User Preference: " + ", ".join(f'"{t}"' for t in liked) + "\n")
    assert sample.input.endswith(f'target movie "{row["title"]}"?') and sample.label == row["label"]
    rows = collm_rows(split.test.head(3), mf_parts(ours.data)["train"], 3).frame
    assert rows["his_title"][0].to_list() == liked and rows["item"].to_list() == rows["item_id"].to_list()


def _config(tmp_path: Path, tiny: Path, tallrec_epochs: int = 1) -> Path:
    path = tmp_path / "b.yaml"
    path.write_text(
        f"workdir: {tmp_path / 'run'}\n"
        "baselines:\n"
        f"  tallrec: {{model: {tiny}, device: cpu, shots: 4, epochs: {tallrec_epochs}, batch_size: 4, "
        "valid_samples: 8, test_samples: 8, eval_batch_size: 8}\n"
        f"  collm: {{model: {tiny}, device: cpu, train_samples: 16, valid_samples: 16, test_samples: 24, "
        "history: 3, mapper_epochs: 2, batch_size: 8, eval_batch_size: 12, "
        "mf: {dims: [8], lrs: [0.01], weight_decays: [1.0e-7], epochs: 2}}\n"
        "  same_data: {test_samples: 16, new_user_samples: 8}\n")
    return path


@pytest.mark.slow
def test_only_one_method_keeps_every_finished_methods_rows(tiny, ml100k_small_dir: Path, tmp_path: Path):
    data = ["--data", str(ml100k_small_dir)]
    cfg = _config(tmp_path, tiny)
    results = tmp_path / "run" / "baselines" / "results"
    assert cli_main(["baselines", "--config", str(cfg), "--only", "tallrec", *data]) == 0
    first = json.loads((results / "results.json").read_text())
    assert list(first["methods"]) == ["tallrec"] and first["not_run"] == ["collm"]
    assert first["same_data"]["not_run"] == ["collm", "kar"] and first["same_data"]["held_out_users"] == 8
    ours = first["same_data"]["methods"]["tallrec"]["result"]
    assert 16 <= ours["n_test"] <= 16 + 8  # the all-users draw and the new users' draw, overlapping
    headline = ours["models"]["TALLRec K=4"]
    assert headline["test"]["n"] == 16 and headline["new_users"]["n"] >= 8 and headline["lm_tokens"] > 0
    adapter = tmp_path / "run" / "baselines" / "ours-tallrec" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns

    assert cli_main(["baselines", "--config", str(cfg), "--only", "collm", *data]) == 0
    record = json.loads((results / "results.json").read_text())
    assert list(record["methods"]) == ["tallrec", "collm"] and record["not_run"] == []
    assert record["methods"]["tallrec"]["result"] == first["methods"]["tallrec"]["result"]
    assert record["methods"]["tallrec"]["wall_seconds"] is None  # read back, not asked for
    assert record["same_data"]["methods"]["tallrec"]["result"] == ours
    assert adapter.stat().st_mtime_ns == before
    table = (results / "results.md").read_text()
    auc = first["methods"]["tallrec"]["result"]["test"]["auc"]
    assert f"| TALLRec K=4 | TALLRec ML-100K | {tiny} | {auc:.4f} |" in table
    assert "| CoLLM-MF | CoLLM ML-1M |" in table and "CoLLM Table II" in table
    assert f"| TALLRec K=4 | {headline['test']['auc']:.4f} |" in table
    assert "| CoLLM-MF | " in table.split("## Same data as UserIP")[1]
    assert "| MF (CoLLM's) | " in table

    # TALLRec's settings change: its old output no longer stands for them
    assert cli_main(["baselines", "--config", str(_config(tmp_path, tiny, 2)), "--only", "collm", *data]) == 0
    last = json.loads((results / "results.json").read_text())
    assert list(last["methods"]) == ["collm"] and last["not_run"] == ["tallrec"]
    assert last["same_data"]["not_run"] == ["tallrec", "kar"]
    assert "Not run with these settings (no finished output): tallrec." in (results / "results.md").read_text()
