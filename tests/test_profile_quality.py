"""Issue #3: the best epoch is published, dead codes are re-seeded, codes are described
from the data. Real Trainer, FAISS and polars throughout; the LM is the tiny random Llama."""

from __future__ import annotations

import json
import math
from collections import Counter
from statistics import median

import numpy as np
import polars as pl
import pytest
import torch

from tests.profile_fixtures import write_data_dir
from userip.config import ProfileConfig
from userip.profile_infer import infer
from userip.profile_infer.codebooks import assign_chunked, reseed_dead_codes
from userip.profile_infer.describe import describe_codes
from userip.profile_infer.layout import Profile


def test_published_profile_is_the_best_epoch_not_the_last(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12)
    # lr 1.0 and ℓ_rec at 90% of θ's gradient on the tiny model: each joint epoch trades
    # LM loss for ℓ_rec, so the second one raises the validation LM loss (checked below)
    # and patience 1 stops the run after it.
    base = dict(model=str(tiny), max_target_tokens=16, batch_size=4, warmup_epochs=1,
                patience=1, checkpoint_every=2, explain_users=0, lr=1.0, rec_grad_share=0.9)
    run = Profile.read(infer(ProfileConfig(**base, max_epochs=3), data, tmp_path / "run"))
    valid = {int(r["epoch"]): r["valid_llm"] for r in run.curves}
    assert run.meta.epochs_run == 3 and valid[2] > valid[1], "construction changed"
    assert run.meta.published_epoch == 1
    assert run.meta.best_valid_llm == pytest.approx(valid[1])

    # The same run stopped after joint epoch 1: its last state is what must be published.
    ref = Profile.read(infer(ProfileConfig(**base, max_epochs=1), data, tmp_path / "ref"))
    assert torch.equal(run.theta, ref.theta)
    assert all(torch.equal(a, b) for a, b in zip(run.codebooks, ref.codebooks))
    assert all(torch.equal(run.surrogate[k], v) for k, v in ref.surrogate.items())
    assert run.codes.equals(ref.codes)

    # The guard ran at every joint epoch end and is counted in curves and meta.
    joint = [r for r in run.curves if r["phase"] == "joint"]
    assert all(not math.isnan(r["reseeded"]) for r in joint)
    assert sum(r["reseeded"] for r in joint) == sum(run.meta.reseeded_codes.values())
    for p in run.meta.profiles:  # the published codebooks passed the guard
        assert set(run.codes[p.name].to_list()) == set(range(p.K))


def _clusters() -> torch.Tensor:
    """(30, 2 tokens, 2 dims): token 0 in three tight clusters of 10 users each."""
    rng = np.random.default_rng(0)
    tok0 = np.concatenate([rng.normal(c, 0.1, size=(10, 2)) for c in ([0, 0], [10, 0], [0, 10])])
    theta = np.stack([tok0, rng.normal(size=tok0.shape)], axis=1)
    return torch.tensor(theta, dtype=torch.float32)


def _cluster_codes(theta: torch.Tensor, book: np.ndarray) -> list[set[int]]:
    codes, _ = assign_chunked(theta, slice(0, 1), book)
    return [set(codes[i: i + 10].tolist()) for i in (0, 10, 20)]


def test_collapsed_codebook_is_split_back_into_the_clusters():
    """Everyone on code 0, the other codes far away: the guard splits code 0's crowd."""
    theta = _clusters()
    book = np.array([[3.0, 3.0], [90.0, 90.0], [-90.0, 90.0]], dtype=np.float32)
    assert _cluster_codes(theta, book) == [{0}, {0}, {0}]  # collapsed
    new, reseeded = reseed_dead_codes(theta, slice(0, 1), book)
    assert sorted(reseeded) == [1, 2]
    per_cluster = _cluster_codes(theta, new)
    assert all(len(c) == 1 for c in per_cluster)  # each cluster on one code ...
    assert set().union(*per_cluster) == {0, 1, 2}  # ... and each on its own
    again, same = reseed_dead_codes(theta, slice(0, 1), book)
    assert same == reseeded and np.array_equal(again, new)  # deterministic


def test_rarely_used_code_counts_as_dead_with_a_share():
    """Code 0 serves two clusters, code 2 one straggler: alive at share 0, dead at 0.1."""
    theta = _clusters()
    theta[29, 0] = torch.tensor([-20.0, -20.0])
    book = np.array([[5.0, 0.0], [0.0, 10.0], [-20.0, -20.0]], dtype=np.float32)
    assert reseed_dead_codes(theta, slice(0, 1), book)[1] == []
    new, reseeded = reseed_dead_codes(theta, slice(0, 1), book, min_share=0.1)  # needs 3 users
    assert reseeded == [2]
    np.testing.assert_array_equal(new[1], book[1])  # the code that was fine is untouched
    counts = np.bincount(assign_chunked(theta, slice(0, 1), new)[0], minlength=3)
    assert (counts >= 3).all()


def test_a_healthy_codebook_is_left_alone():
    theta = _clusters()
    book = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    new, reseeded = reseed_dead_codes(theta, slice(0, 1), book, min_share=0.2)
    assert reseeded == [] and np.array_equal(new, book)


# ---- descriptions ------------------------------------------------------------------------

ITEMS = {"i1": ("Alpha (1990)", "Drama | War"), "i2": ("Beta (1991)", "Comedy"),
         "i3": ("Gamma (1992)", "Drama"), "i4": ("Delta (1993)", None),
         "i5": ("Epsilon (1994)", "Comedy | Drama")}
TRAIN = {"u1": ["i1", "i3", "i5"], "u2": ["i1", "i3"], "u3": ["i1", "i2", "i3"],
         "u4": ["i2", "i4"], "u5": ["i2", "i4", "i5"], "u6": ["i2", "i1"]}
CODE = {"u1": 0, "u2": 0, "u3": 0, "u4": 1, "u5": 1, "u6": 1}
USERS = {"u1": ("F", 20), "u2": ("F", 30), "u3": ("M", 40),
         "u4": ("M", 25), "u5": ("M", 35), "u6": ("M", 45)}


def _write_tiny_dataset(path):
    rows = [(u, i, "train") for u, items in TRAIN.items() for i in items]
    rows += [("u1", "i2", "valid"), ("u1", "i4", "test"), ("u4", "i1", "valid")]  # ignored
    pl.DataFrame(rows, schema=["user_id", "item_id", "split"], orient="row").write_parquet(
        path / "interactions.parquet")
    pl.DataFrame([(i, t, c) for i, (t, c) in ITEMS.items()],
                 schema=["item_id", "title", "categories"], orient="row").write_parquet(
        path / "items.parquet")
    pl.DataFrame([(u, j, g, a, f"z{j}") for j, (u, (g, a)) in enumerate(USERS.items())],
                 schema=["user_id", "user_idx", "gender", "age", "zip_code"],
                 orient="row").write_parquet(path / "users.parquet")


def _expected_lifts(pairs: list[tuple[int, str]], base: dict[int, int], min_support: int,
                    need: dict[int, float] | None = None) -> dict[int, list[tuple]]:
    """Lift by plain counting: (value, count, lift) sorted by lift, count, value."""
    total = sum(base.values())
    by_value = Counter(v for _, v in pairs)
    out: dict[int, list[tuple]] = {}
    for (code, value), count in sorted(Counter(pairs).items()):
        lift = (count / base[code]) / (by_value[value] / total)
        floor = max(min_support, need[code]) if need else min_support
        if count >= floor and lift > 1:
            out.setdefault(code, []).append((value, count, round(lift, 3)))
    return {c: sorted(v, key=lambda t: (-t[2], -t[1], t[0])) for c, v in out.items()}


def test_descriptions_count_lifts_from_the_train_split(tmp_path):
    _write_tiny_dataset(tmp_path)
    codes = pl.DataFrame({"user_id": list(CODE), "hobby": list(CODE.values())},
                         schema={"user_id": pl.String, "hobby": pl.Int32})
    got = describe_codes(codes, ["hobby"], tmp_path, min_support=2)["hobby"]

    inter = {c: sum(len(TRAIN[u]) for u in CODE if CODE[u] == c) for c in (0, 1)}
    users = Counter(CODE.values())
    assert {c: got[c]["users"] for c in got} == {0: 3, 1: 3}
    assert {c: got[c]["train_interactions"] for c in got} == inter == {0: 8, 1: 7}

    cat_pairs = [(CODE[u], cat) for u, items in TRAIN.items() for i in items
                 if ITEMS[i][1] for cat in ITEMS[i][1].split(" | ")]
    want = _expected_lifts(cat_pairs, inter, 2)
    assert want[0] == [("Drama", 7, 1.458), ("War", 3, 1.406)]  # (7/8)/(9/15), (3/8)/(4/15)
    for c in (0, 1):
        assert [(d["category"], d["count"], d["lift"])
                for d in got[c]["over_represented_categories"]] == want.get(c, [])

    item_pairs = [(CODE[u], i) for u, items in TRAIN.items() for i in items]
    need = {c: math.ceil(0.1 * users[c]) for c in users}
    want_items = _expected_lifts(item_pairs, inter, 2, need)
    for c in (0, 1):
        assert [(d["item_id"], d["count"], d["lift"]) for d in got[c]["typical_items"]] \
            == want_items.get(c, [])
        assert [d["title"] for d in got[c]["typical_items"]] == \
            [ITEMS[i][0] for i, _, _ in want_items.get(c, [])]
    assert got[1]["typical_items"][0]["title"] == "Delta (1993)"

    gender = _expected_lifts([(CODE[u], USERS[u][0]) for u in CODE], users, 2)
    assert [(d["value"], d["count"], d["lift"]) for d in got[0]["user_attributes"]["gender"]] \
        == gender[0] == [("F", 2, 2.0)]
    assert got[1]["user_attributes"]["gender"] == [
        {"value": "M", "count": 3, "share": 1.0, "share_all": round(4 / 6, 4), "lift": 1.5}]
    ages = [USERS[u][1] for u in CODE]
    assert got[0]["user_attributes"]["age"] == {
        "median": median(ages[:3]), "median_all": median(ages)}
    assert "zip_code" in got[0]["user_attributes"]  # few distinct values here: kept
    assert got[0]["summary"].startswith("3 users (50.0%); more often: Drama x1.46 (7), War x1.41 (3)")


def test_explanation_json_keeps_nearest_tokens_and_adds_descriptions(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12)
    pl.DataFrame({"item_id": [f"i{k}" for k in range(12)],
                  "title": [f"Film {k}" for k in range(12)],
                  "categories": ["Drama" if k % 2 else "Comedy | Drama" for k in range(12)]}
                 ).write_parquet(data / "items.parquet")
    cfg = ProfileConfig(model=str(tiny), max_target_tokens=16, batch_size=4, warmup_epochs=1,
                        max_epochs=1, explain_users=1, lr=1e-2, explain_min_support=1)
    out = infer(cfg, data, tmp_path / "p")
    explain = json.loads((out / "explanation.json").read_text())
    assert "Table 7" in explain["method"]["nearest_tokens"]
    codes = pl.read_parquet(out / "codes.parquet")
    for entry in explain["profiles"]["hobby"]:
        held = int((codes["hobby"] == entry["code"]).sum())
        assert entry["users"] == held and entry["summary"].startswith(f"{held} users")
        assert len(entry["nearest_tokens"][0]) == 5
        assert entry["description"]["train_interactions"] == 6 * held  # 6 train items each
