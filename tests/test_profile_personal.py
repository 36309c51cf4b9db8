"""Issue #10 A/B: behaviour text with feedback, whole-history windows, a shared θ start,
EMA codebooks, γ by gradient share, pickle-free checkpoints, and the evidence measures.

Real dataprep writers, the real Trainer on the tiny random Llama, FAISS and sklearn."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import polars as pl
import pytest
import torch

from tests.profile_fixtures import write_data_dir
from tests.readers_support import write_lines
from tests.test_readers_amazon import review2018
from userip.config import PrepareConfig, ProfileConfig
from userip.dataprep.pipeline import prepare
from userip.profile_infer import infer
from userip.profile_infer.checkpoint import Checkpointer
from userip.profile_infer.codebooks import EMACodebook
from userip.profile_infer.data import load_profile_data, pack_windows
from userip.profile_infer.evidence import derangement, feedback_words, gap, lm_evidence
from userip.profile_infer.layout import Profile
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.train import rec_weight
from userip.quantize.evidence import agreement, code_evidence, nmi_test, user_facts


# ---- behaviour text ---------------------------------------------------------------------
def test_amazon_behaviour_text_has_feedback_review_words_and_describes_untitled_items(tmp_path):
    reviews = write_lines(tmp_path / "reviews.json", [
        review2018("A1", "B1", 5.0, 10, "Great mug,\n keeps coffee hot for hours and hours"),
        review2018("A1", "B2", 1.0, 20),
        review2018("A1", "B3", 4.0, 30, "ok"),
    ])
    meta = write_lines(tmp_path / "meta.json", [
        {"asin": "B1", "title": "Sturdy Mug", "category": ["Home", "Mugs"], "brand": "Acme"},
        {"asin": "B2", "category": ["Electronics", "Headphones"], "brand": "Sony"},
    ])  # B3 has no meta line at all
    stats = prepare(PrepareConfig(source="amazon2018", reviews=reviews, meta=meta, min_core=1,
                                  split_ratios=(0.98, 0.01, 0.01)), tmp_path / "out")
    beh = pl.read_parquet(tmp_path / "out" / "behaviour.parquet")
    train = (pl.read_parquet(tmp_path / "out" / "interactions.parquet")
             .filter(pl.col("split") == "train")["item_id"].to_list())
    expected = {"B1": 'Sturdy Mug: liked "Great mug, keeps coffee hot for hours and"',  # 8 words
                "B2": "an item in Headphones by Sony: disliked",
                "B3": 'an item: liked "ok"'}
    assert beh["items"][0].to_list() == [expected[i] for i in train]  # time order, none dropped
    assert beh["text"][0] == "; ".join(expected[i] for i in train)
    assert "liked (rating >= 4)" in stats["behaviour_feedback"]


def test_a_source_without_ratings_gets_no_feedback_marks(tmp_path):
    reviews = write_lines(tmp_path / "reviews.json",
                          [review2018("A1", f"B{i}", 5.0, i) for i in range(6)])
    stats = prepare(PrepareConfig(source="amazon2018", reviews=reviews, min_core=1),
                    tmp_path / "out")
    items = pl.read_parquet(tmp_path / "out" / "behaviour.parquet")["items"].explode()
    assert not items.str.contains("liked").any()
    assert stats["behaviour_feedback"].startswith("none: the source has no ratings")


# ---- windows ----------------------------------------------------------------------------
def test_windows_keep_items_whole_and_visits_cover_the_whole_history(tiny):
    lm = load_frozen_lm(str(tiny), "cpu")
    history = [f"Movie number {i} ({1950 + i}): {'liked' if i % 3 else 'disliked'}"
               for i in range(23)]
    per_item = [lm.tokenizer(f" {p};", add_special_tokens=False).input_ids for p in history]
    (wins,), cut = pack_windows(lm.tokenizer, [history], 40)
    assert cut == 0 and all(len(w) <= 40 for w in wins) and len(wins) > 3
    assert [t for w in wins for t in w] == [t for item in per_item for t in item]
    item_ends = set(np.cumsum([len(x) for x in per_item]).tolist())
    assert set(np.cumsum([len(w) for w in wins]).tolist()) <= item_ends  # cut between items only


def test_each_visit_trains_on_the_next_window(tiny, tmp_path):
    data_dir = write_data_dir(tmp_path / "data", n_users=4)
    lm = load_frozen_lm(str(tiny), "cpu")
    data = load_profile_data(data_dir, lm.tokenizer, 8)
    n = len(data.windows[0])
    assert n > 1
    seen = [data.window(0, v) for v in range(n)]
    assert sorted(map(tuple, seen)) == sorted(map(tuple, data.windows[0]))
    assert seen[0] == data.windows[0][-1]  # most recent first
    assert data.window(0, n) == seen[0]
    longest = max(len(w) for w in data.windows)
    assert data.coverage(1) < 1.0 and data.coverage(longest) == pytest.approx(1.0)


# ---- θ start, codebooks, γ, checkpoints -------------------------------------------------
def test_shared_start_makes_differences_come_from_the_data(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12)
    base = dict(model=str(tiny), max_target_tokens=16, batch_size=4, warmup_epochs=1,
                max_epochs=1, explain_users=0, lr=0.05)
    shared = Profile.read(infer(ProfileConfig(**base), data, tmp_path / "s"))
    emb_mean = load_frozen_lm(str(tiny), "cpu").model.get_input_embeddings().weight.mean(0)
    # every row moved away from the common start, and rows differ from each other
    assert (shared.theta - emb_mean).flatten(1).norm(dim=1).min() > 0
    assert torch.cdist(shared.theta.flatten(1), shared.theta.flatten(1)).sum() > 0
    assert shared.meta.theta_init == "shared"
    rand = Profile.read(infer(ProfileConfig(**base, theta_init="random"), data, tmp_path / "r"))
    assert (rand.theta - shared.theta).abs().max() > 0.1  # the ablation still runs
    with pytest.raises(ValueError, match="warmup_epochs >= 1"):
        ProfileConfig(**{**base, "warmup_epochs": 0})


def test_shared_start_has_its_own_learning_rate(tiny, tmp_path):
    """shared_lr drives the shared start; the per-user steps after it run at lr."""
    data = write_data_dir(tmp_path / "data", n_users=8)
    base = dict(model=str(tiny), max_target_tokens=16, batch_size=4, warmup_epochs=1,
                max_epochs=1, explain_users=0, lr=1e-6, shared_steps=3)
    emb_mean = load_frozen_lm(str(tiny), "cpu").model.get_input_embeddings().weight.mean(0)

    def moved(**kw) -> float:
        theta = Profile.read(infer(ProfileConfig(**base, **kw), data, tmp_path / str(kw))).theta
        return float((theta.mean(0) - emb_mean).abs().max())

    fast, slow = moved(shared_lr=0.05), moved()
    assert fast > 0.05 and slow < 1e-3  # Adam: about shared_lr (or lr) per coordinate per step


def test_ema_codebook_follows_its_users_and_a_code_without_users_stays():
    cb = EMACodebook(2, 2, decay=0.5, device=torch.device("cpu"))
    cb.reset(torch.tensor([[0.0, 0.0], [5.0, 5.0]]), torch.tensor([2.0, 2.0], dtype=torch.float64))
    flat = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    for _ in range(20):
        cb.update(flat, torch.tensor([0, 0]))
    assert torch.allclose(cb.vectors[0], torch.tensor([1.0, 1.0]), atol=1e-4)
    assert torch.equal(cb.vectors[1], torch.tensor([5.0, 5.0]))  # no drift without users


def test_curves_log_each_terms_gradient_and_gamma_carries_the_share(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12)
    run = Profile.read(infer(ProfileConfig(model=str(tiny), max_target_tokens=16, batch_size=4,
                                             warmup_epochs=1, max_epochs=1, explain_users=0,
                                             rec_grad_share=0.5), data, tmp_path / "p"))
    joint = [r for r in run.curves if r["phase"] == "joint"][0]
    for key in ("grad_llm", "grad_vec", "grad_rec", "gamma", "history_coverage"):
        assert np.isfinite(joint[key]) and joint[key] >= 0, key
    assert joint["gamma"] != pytest.approx(1.0)  # chosen by the share, not the fixed γ
    # γ such that γ·|∇ℓ_rec| is the share of θ's gradient: share/(1-share)·|rest|/|∇ℓ_rec|
    cfg = ProfileConfig(model=str(tiny), rec_grad_share=0.2)
    assert rec_weight(cfg, 3.0, 2.0) == pytest.approx(0.25 * 3.0 / 2.0)
    assert rec_weight(cfg, 3.0, 0.0) == cfg.gamma  # nothing to scale
    warm = run.meta.surrogate_warmup
    assert warm["bce_after"] < warm["bce_before"]


def test_a_planted_pickle_in_the_checkpoint_folder_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = Checkpointer(tmp_path / "ckpt", "fp")
    ckpt.dir.mkdir()
    with open(ckpt.path("state"), "wb") as fh:
        pickle.dump({"fingerprint": "fp", "x": Payload()}, fh)
    assert ckpt.load("state") is None and not marker.exists()
    ckpt.save("state", {"theta": torch.ones(2), "progress": {"epoch": 1, "curves": [{"a": 1.0}]}})
    assert torch.equal(ckpt.load("state")["theta"], torch.ones(2))
    assert Checkpointer(tmp_path / "ckpt", "other").load("state") is None


# ---- evidence ---------------------------------------------------------------------------
def test_derangement_and_gap_statistics():
    for n in (2, 3, 10, 101):
        other = derangement(n, seed=n)
        assert sorted(other) == list(range(n)) and (other != np.arange(n)).all()
    rng = np.random.default_rng(0)
    own = rng.normal(2.0, 0.1, 200)
    better = gap(own, own + 0.05 + rng.normal(0, 0.01, 200))
    assert better["ci95"][0] > 0 and better["p_value"] < 1e-6
    same = gap(own, own + rng.normal(0, 0.01, 200))
    assert same["ci95"][0] < 0 < same["ci95"][1]


def test_lm_evidence_finds_a_personal_theta_and_no_gap_without_one():
    theta = torch.arange(20, dtype=torch.float32).reshape(20, 1, 1).repeat(1, 2, 3)
    targets = [[i] for i in range(20)]
    rows = np.arange(20)

    def personal(t, tg):  # a user's loss is lowest at their own θ; only even users have words
        loss = np.array([abs(float(x[0, 0]) - y[0]) for x, y in zip(t, tg)])
        return {"all": loss, "words": np.where(np.array([y[0] for y in tg]) % 2 == 0, loss, np.nan)}

    books = [torch.tensor([[0.0] * 3, [10.0] * 3, [19.0] * 3])] * 2
    ev = lm_evidence(personal, theta, rows, targets, books, (slice(0, 1), slice(1, 2)), seed=0)
    assert ev["theta"]["gap"] > 0 and ev["theta"]["ci95"][0] > 0
    assert ev["code"]["gap"] > 0
    assert ev["feedback"]["theta"]["n_users"] == 10 and ev["feedback"]["theta"]["gap"] > 0
    flat = lm_evidence(lambda t, tg: {"all": np.ones(len(tg))}, theta, rows, targets, books,
                       (slice(0, 1), slice(1, 2)), seed=0)
    assert flat["theta"]["gap"] == 0.0 and "feedback" not in flat
    warmup = lm_evidence(personal, theta, rows, targets, [], (), seed=0)  # no codebooks yet
    assert "code" not in warmup and warmup["theta"] == ev["theta"]
    # several draws: the other side is the mean over that many derangements, one per seed
    two = lm_evidence(personal, theta, rows, targets, [], (), seed=0, draws=2)
    second = lm_evidence(personal, theta, rows, targets, [], (), seed=1)
    assert two["draws"] == 2
    assert two["theta"]["other"] == pytest.approx((ev["theta"]["other"] + second["theta"]["other"]) / 2)


def test_feedback_words_are_scored_only_where_the_texts_carry_feedback(tiny, tmp_path):
    lm = load_frozen_lm(str(tiny), "cpu")
    rated = load_profile_data(write_data_dir(tmp_path / "rated", n_users=4), lm.tokenizer, 16)
    implicit = load_profile_data(write_data_dir(tmp_path / "implicit", n_users=4, ratings=False),
                                 lm.tokenizer, 16)
    assert rated.feedback and not implicit.feedback
    words = feedback_words(lm.tokenizer)
    def marked(data):  # valid texts holding a feedback word's first token
        return sum(bool(torch.isin(torch.tensor(t), words).any()) for t in data.valid_targets)

    assert len(words) == 2 and marked(rated) >= 2 and marked(implicit) == 0


def test_score_targets_scores_every_token_and_the_chosen_words_in_one_pass(tiny, tmp_path):
    from userip.profile_infer.prompt import build_layout, pad_targets, target_nll
    from userip.profile_infer.train import Trainer

    cfg = ProfileConfig(model=str(tiny), max_target_tokens=16, batch_size=4, explain_users=0)
    data_dir = write_data_dir(tmp_path / "data", n_users=4)
    lm = load_frozen_lm(str(tiny), "cpu")
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    data = load_profile_data(data_dir, lm.tokenizer, 16)
    trainer = Trainer(cfg, lm.model, layout, data, lm.device, lm.tokenizer.pad_token_id, "t",
                      tmp_path / "ckpt")
    targets = [data.window(r, 0) for r in range(4)]
    token = torch.tensor([targets[0][-1]])
    absent = [i for i in targets[1] if i != int(token)]  # a target without the word
    with torch.no_grad():
        ids, real = pad_targets(targets[:1], lm.tokenizer.pad_token_id)
        nll, n = target_nll(lm.model, layout, trainer.theta[:1], ids, real & (ids == token))
        whole, m = target_nll(lm.model, layout, trainer.theta[:1], ids, real)
    scored = trainer.score_targets(trainer.theta[:1], targets[:1], words=token)
    assert scored["words"][0] == pytest.approx(float(nll[0] / n[0]), rel=1e-5)
    assert scored["all"][0] == pytest.approx(float(whole[0] / m[0]), rel=1e-5)
    assert scored["words"][0] != pytest.approx(scored["all"][0])
    assert np.isnan(trainer.score_targets(trainer.theta[:1], [absent], words=token)["words"][0])
    assert "words" not in trainer.score_targets(trainer.theta[:1], targets[:1])


def test_code_nmi_beats_the_null_only_when_codes_follow_the_attribute(ml100k_small_dir):
    facts = user_facts(ml100k_small_dir)
    assert facts["like_rate"].is_between(0, 1).all() and facts["taste"].null_count() < len(facts)
    follow = facts.select("user_id", pl.col("like_bin").alias("p"))
    ev = code_evidence(follow, ["p"], facts, permutations=200, seed=0)["p"]["like_rate"]
    assert ev["nmi"] == pytest.approx(1.0) and ev["nmi"] > ev["null_p99"] and ev["p_value"] < 0.01
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 4, 2000)
    null = nmi_test(noise, rng.integers(0, 4, 2000), permutations=200, seed=0)
    assert null["p_value"] > 0.01
    a = follow.rename({"p": "q"})
    assert agreement(a, a, ["q"]) == {"q": pytest.approx(1.0)}


def test_every_run_records_the_evidence(tiny, tmp_path):
    data = write_data_dir(tmp_path / "data", n_users=12)
    meta = json.loads((infer(ProfileConfig(model=str(tiny), max_target_tokens=16, batch_size=4,
                                           warmup_epochs=1, max_epochs=1, explain_users=0),
                             data, tmp_path / "p") / "meta.json").read_text())
    ev = meta["evidence"]
    assert ev["n_users"] == 12
    for part in ("theta", "code"):
        assert len(ev[part]["ci95"]) == 2 and np.isfinite(ev[part]["gap"])
    assert 0 < meta["history_coverage"] <= 1
