"""KAR: the prompts from real MovieLens rows, the chunked text cache resuming after a stop,
mean pooling that ignores padding, the hybrid-expert adapter, and one tiny end-to-end
`userip baselines --only kar --data` run that is tabulated beside the other methods, reused,
and serves from its saved model (the real SmolLM2-135M wherever a text is generated: the tiny
random Llama writes only newlines)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from userip.baselines.config import KarConfig, KarExpertsConfig
from userip.baselines.kar import HybridExperts, KarDCN, TextTables, requests
from userip.baselines.kar_text import (
    encode,
    generate_texts,
    item_prompt,
    mean_pool,
    text_folder,
    user_prompt,
)
from userip.baselines.suite import METHODS, our_split
from userip.cli import main as cli_main
from userip.config import load_config
from userip.downstream.features import FeatureMap, Split
from userip.hyper import FitSettings
from userip.profile_infer.model_loading import load_frozen_lm

PROMPTS = [item_prompt("Heat (1995)", "Action | Crime"), item_prompt("Fargo (1996)", None),
           user_prompt([("Alien (1979)", 5.0), ("Babe (1995)", 2.0)], {"age": "24"}),
           item_prompt("Ran (1985)", "Drama | War"), item_prompt("Jaws (1975)", "Thriller")]


def test_prompts_list_ratings_oldest_first_and_the_item_facts():
    p = user_prompt([("Alien (1979)", 5.0), ("Babe (1995)", 2.5), ("Ran (1985)", None)],
                    {"gender": "F", "occupation": "writer"})
    assert p.startswith("A user (gender: F, occupation: writer) has rated these movies, the most recent last:\n"
                        "Alien (1979): 5 of 5 stars\nBabe (1995): 2.5 of 5 stars\nRan (1985)\nAnalyze")
    assert item_prompt("Heat (1995)", "Action | Crime | Thriller").startswith(
        "Introduce the movie Heat (1995) (Action, Crime, Thriller): describe its genre")
    assert item_prompt("Heat (1995)", None).startswith("Introduce the movie Heat (1995): ")


def test_user_prompts_hold_the_most_recent_train_ratings(ml100k_small_dir: Path):
    cfg = KarConfig(users=5, items=4, history=3)
    req = requests(ml100k_small_dir, cfg)
    assert len(req.user_ids) == 5 == len(set(req.user_ids)) and len(req.item_prompts) == 4
    assert requests(ml100k_small_dir, cfg) == req  # seeded
    inter = pl.read_parquet(ml100k_small_dir / "interactions.parquet")
    items = pl.read_parquet(ml100k_small_dir / "items.parquet")
    titles = dict(zip(items["item_id"].cast(pl.String), items["title"]))
    user = req.user_ids[0]
    mine = (inter.with_row_index("line").filter((pl.col("user_id").cast(pl.String) == user)
                                              & (pl.col("split") == "train")).sort(["ts", "line"]).tail(3))
    lines = [f"{titles[str(i)]}: {r:g} of 5 stars" for i, r in zip(mine["item_id"], mine["rating"])]
    assert "\n".join(lines) + "\nAnalyze" in req.user_prompts[0]


@pytest.fixture(scope="module")
def smollm():
    return load_frozen_lm("smollm2-135m", "cpu")


@pytest.mark.slow
def test_generation_resumes_at_the_first_missing_chunk(smollm, tmp_path: Path):
    ids = [f"i{k}" for k in range(len(PROMPTS))]
    folder = text_folder(tmp_path, "item", "smollm2-135m", 6, 2, ids, PROMPTS)
    assert folder != text_folder(tmp_path, "item", "smollm2-135m", 7, 2, ids, PROMPTS)
    first = generate_texts(smollm, folder, ids, PROMPTS, 6, 2, 2, limit=1)  # stopped after one chunk
    assert not first.complete and first.generated_rows == 2 and first.frame["id"].to_list() == ids[:2]
    assert sorted(p.name for p in folder.iterdir()) == ["chunk-00000.parquet"]
    kept = (folder / "chunk-00000.parquet").stat().st_mtime_ns
    second = generate_texts(smollm, folder, ids, PROMPTS, 6, 2, 2)
    assert second.complete and second.generated_rows == 3  # only the missing rows
    assert (folder / "chunk-00000.parquet").stat().st_mtime_ns == kept
    assert second.frame.head(2).equals(first.frame)
    assert second.frame["id"].to_list() == ids and second.frame["prompt"].to_list() == PROMPTS
    assert (second.frame["new_tokens"] <= 6).all() and (second.frame["prompt_tokens"] > 20).all()
    assert second.frame["text"].str.len_chars().min() > 0
    again = generate_texts(smollm, folder, ids, PROMPTS, 6, 2, 2)
    assert again.generated_rows == 0 and again.frame.equals(second.frame)


def test_mean_pool_ignores_masked_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e6, -1e6]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


@pytest.mark.slow
def test_encoder_vectors_do_not_depend_on_padding(smollm):
    short, long = "A quiet drama.", "A long, loud action film with car chases, explosions and a famous score."
    alone, tokens = encode(smollm, [short], 4)
    batched, batched_tokens = encode(smollm, [short, long, short], 4)
    assert alone.shape == (1, smollm.model.config.hidden_size) and batched_tokens > 2 * tokens
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched[2], alone[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[1], alone[0])


def test_hybrid_experts_mix_with_gates_that_sum_to_one():
    torch.manual_seed(0)
    adapter = HybridExperts(5, 3, KarExpertsConfig(shared=2, specific=3, hidden=(4,)))
    x = torch.randn(7, 2, 5)
    out = adapter(x)
    assert out.shape == (7, 2, 3)
    for f in range(2):
        g = adapter.gate(f, x[:, f])
        assert g.shape == (7, 5) and torch.allclose(g.sum(-1), torch.ones(7)) and (g > 0).all()
        assert not torch.allclose(g[0], g[1])  # computed from each row's vector
    assert len(adapter.shared) == 2 and all(len(s) == 3 for s in adapter.specific)
    assert not torch.allclose(out[:, 0], adapter.field(1, x[:, 0]))  # per-field experts differ


def test_kar_dcn_reads_text_rows_and_gives_rowless_users_the_no_text_input():
    torch.manual_seed(0)
    fmap = FeatureMap(users=["a", "b", "c"], items=["x", "y"])
    vec = torch.randn(2, 4)
    tables = TextTables(TextTables.table(vec, 4), TextTables.table(vec[:1], 4), ["a", "c"], ["y"])
    assert tables.user.shape == (3, 5) and torch.equal(tables.user[-1], torch.zeros(5))
    assert torch.equal(tables.user[:2, -1], torch.ones(2))
    net = KarDCN(fmap, FitSettings(), tables, KarExpertsConfig(hidden=(4,)))
    split = Split(np.array(["a", "b", "c", "new"]), np.array(["x", "y", "y", "z"]), np.zeros((4, 2), np.int64),
                  np.zeros((4, 0), np.float32), np.zeros(4, np.float32))
    rows = tables.positions(split)
    assert rows.tolist() == [[0, 1], [2, 0], [1, 0], [2, 1]]  # b and new: no text (row 2)
    logits = net(torch.from_numpy(np.hstack([split.x_cat, rows])), torch.zeros(4, 0))
    assert logits.shape == (4,)
    u = net._field(0, net.user_table, torch.tensor([2, 0, 2]))
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])


@pytest.mark.slow
def test_tiny_kar_run_writes_the_table_is_reused_and_serves(ml100k_small_dir: Path, tmp_path: Path, capsys):
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"workdir: {tmp_path / 'run'}\nbaselines:\n  kar: {{device: cpu, "
                   "users: 6, items: 8, history: 3, max_new_tokens: 4, gen_batch_size: 4, chunk_rows: 4, "
                   "seeds: [0, 1], ctr: {epochs: 3, patience: 1}, experts: {hidden: [8]}}\n")
    argv = ["baselines", "--config", str(cfg), "--only", "kar", "--data", str(ml100k_small_dir)]
    assert cli_main(argv) == 0
    root = tmp_path / "run" / "baselines"
    record = json.loads((root / "results" / "results.json").read_text())
    same = record["same_data"]
    r = same["methods"]["kar"]["result"]
    assert record["methods"] == {} and record["not_run"] == ["tallrec", "collm"]  # KAR has no own protocol
    assert list(same["methods"]) == ["kar"] and same["not_run"] == ["tallrec", "collm"]
    assert r["seeds"] == [0, 1] and r["held_out_users"] == same["held_out_users"] == 8
    assert r["users_with_text"] == 6 and r["items_with_text"] == 8
    assert {f["model"] for f in r["fits"]} == {"dcn", "kar"} and len(r["fits"]) == 4
    for model in ("dcn", "kar"):
        assert {"all", "new"} <= set(r["test"][model])
        assert r["test"][model]["all"]["n"] > r["test"][model]["new"]["n"] > 0
    assert set(r["p_values"]) == {"all", "new", "new_text"} and set(r["p_values"]["all"]) == {"auc", "logloss", "uauc"}
    assert min(r["tokens"].values()) > 0 and r["tokens"]["item_generated"] <= 4 * 8
    for f in r["fits"]:
        assert f["best_epoch"] == int(np.argmax(f["valid_auc"])) + 1  # chosen on valid
    scores = pl.read_parquet(root / "kar" / "test_scores.parquet")
    assert scores.height == r["test"]["kar"]["all"]["n"] and scores["new_user"].sum() == r["test"]["kar"]["new"]["n"]
    assert scores["user_has_text"].sum() > 0
    headline, paired = r["models"].values()  # KAR + DCN first, then its DCN
    assert list(r["models"]) == ["KAR + DCN (2 seeds)", "DCN, KAR's paired fits (2 seeds)"]
    assert headline["test"] == r["test"]["kar"]["all"] and headline["new_users"] == r["test"]["kar"]["new"]
    assert headline["lm_tokens"] == sum(r["tokens"].values()) and paired["lm_tokens"] == 0
    table = (root / "results" / "results.md").read_text()
    same_table = table.split("## Same data as UserIP")[1]
    t, new = headline["test"], headline["new_users"]
    assert (f"| KAR + DCN (2 seeds) | {t['auc']:.4f} | {t['logloss']:.4f} | {t['uauc']:.4f} | {new['auc']:.4f} "
            f"| {t['n']} ({new['n']}) | {headline['lm_tokens']:,} | — |") in same_table
    assert f"| DCN, KAR's paired fits (2 seeds) | {paired['test']['auc']:.4f} |" in same_table
    assert "| KAR + DCN, UserIP Table 5 | 0.7866 |" in table and table in capsys.readouterr().out
    assert "| TALLRec K=" not in table  # TALLRec and CoLLM never ran here

    section = load_config(cfg).baselines
    assert section is not None
    ours = our_split(ml100k_small_dir, None, 0.2, 0)
    score = METHODS["kar"].serve(section, root, ours.data, 50)
    assert score is not None and score() == 50  # the saved model, the cached vectors, no generation

    chunks = sorted((root / "kar-cache" / "texts").glob("*/chunk-*.parquet"))
    assert len(chunks) == 2 + 2  # 6 users and 8 items in chunks of 4
    before = [c.stat().st_mtime_ns for c in chunks]
    assert cli_main(argv) == 0
    again = json.loads((root / "results" / "results.json").read_text())["same_data"]["methods"]["kar"]["result"]
    assert again == r and [c.stat().st_mtime_ns for c in chunks] == before
