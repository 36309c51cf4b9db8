"""CoLLM's prompts, row selection and one small real run (tiny random Llama, SmolLM2's
tokenizer): selection on valid, stage 2 leaves LoRA alone, the saved adapter and mapper
reproduce the test scores, a finished run is reused and a foreign folder refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer

from userip.atomic import OutputDirError
from userip.baselines import collm_mf
from userip.baselines.collm import ANSWERS, END, HEAD, Mapper, Model, prompt_tail, run, select_rows
from userip.baselines.config import CollmConfig, MfConfig
from userip.baselines.lm import SegmentLM, Text, Vectors, answer_ids, load_adapter, splits_cleanly
from userip.errors import ConfigError
from userip.profile_infer.model_loading import load_frozen_lm, materialize_embedded

SMALL = dict(train_samples=16, valid_samples=16, test_samples=24, history=3, mapper_epochs=2,
             batch_size=8, eval_batch_size=12, device="cpu",
             mf=MfConfig(dims=(8,), lrs=(1e-2,), weight_decays=(1e-7,), epochs=2))


def test_text_prompt_is_the_full_one_without_its_collaborative_parts():
    history = [f"Movie {k} (199{k})" for k in range(5)]
    u, i = torch.ones(6), torch.zeros(6)
    text = prompt_tail(history, "Heat (1995)", 3, None)
    full = prompt_tail(history, "Heat (1995)", 3, (u, i))
    assert len(text) == 1 and isinstance(text[0], Text)
    assert [type(s) for s in full] == [Text, Vectors, Text, Vectors, Text]
    assert torch.equal(full[1].values, u[None]) and torch.equal(full[3].values, i[None])
    whole = "".join(s.text for s in full if isinstance(s, Text))
    cut = (whole.replace(". Additionally, we have information about the user's preferences "
                         "encoded in the feature", "").replace(" with the feature", ""))
    assert cut == text[0].text
    assert text[0].text.startswith(' "Movie 2 (1992)", "Movie 3 (1993)", "Movie 4 (1994)". Using')
    assert text[0].text.endswith('titled "Heat (1995)"? Answer with "Yes" or "No".\n#Answer:')


def test_rows_are_seeded_and_valid_test_do_not_move_with_train_size():
    a = select_rows(CollmConfig(train_samples=20, valid_samples=10, test_samples=30, seed=1))
    b = select_rows(CollmConfig(train_samples=20, valid_samples=10, test_samples=30, seed=1))
    c = select_rows(CollmConfig(train_samples=50, valid_samples=10, test_samples=30, seed=1))
    assert all(a[p].frame.equals(b[p].frame) for p in a)
    assert a["valid"].frame.equals(c["valid"].frame) and a["test"].frame.equals(c["test"].frame)
    assert not a["train"].frame.equals(c["train"].frame[:20])
    assert [len(a[p]) for p in ("train", "valid", "test")] == [20, 10, 30]
    assert set(a["test"].frame["split"]) == {"test"}
    # warm needs both sides seen 3 times in train, so it implies CoLLM's not_cold flag
    full = select_rows(CollmConfig(train_samples=None, valid_samples=None, test_samples=None))
    test = full["test"].frame
    assert test.height == 7331 and (test.filter(pl.col("warm"))["not_cold"] == 1).all()
    with pytest.raises(ConfigError, match="collm: test_samples asks for 9000 samples; the protocol has 7331"):
        select_rows(CollmConfig(test_samples=9000))


def test_the_template_head_is_a_clean_prefix_of_real_prompts():
    """So scoring runs HEAD once and reuses its cache on every row."""
    tok = AutoTokenizer.from_pretrained(materialize_embedded("smollm2-135m"))
    rows = select_rows(CollmConfig(train_samples=200, valid_samples=200, test_samples=200))
    first = [prompt_tail(h, t, 10, (torch.zeros(1), torch.zeros(1)))[0].text
             for part in rows.values() for h, t in zip(part.frame["his_title"], part.frame["title"])]
    assert all(splits_cleanly(tok, HEAD, f) for f in first)


@pytest.mark.slow
def test_small_run_selects_on_valid_keeps_lora_in_stage_2_and_reloads(tiny, tmp_path: Path):
    cfg = CollmConfig(model=str(tiny), **SMALL)
    result = run(cfg, tmp_path / "collm", tmp_path / "mf")
    assert len(result.text_valid_auc) == 1 and len(result.valid_auc) == 2
    assert result.best_epoch == int(np.argmax(result.valid_auc)) + 1
    assert result.test["all"]["n"] == 24 == result.test["warm"]["n"] + result.test["cold"]["n"]
    assert result.train_tokens > 0 and result.eval_tokens > 0
    saved = pl.read_parquet(tmp_path / "collm" / "test_scores.parquet")
    assert math.isclose(roc_auc_score(saved["label"], saved["score_mf"]), result.test_mf["all"]["auc"])

    # one adapter reproduces both stages' scores: stage 2 did not move LoRA
    fresh = load_frozen_lm(cfg.model, "cpu")
    lm = SegmentLM(load_adapter(fresh.model, tmp_path / "collm" / "adapter"), fresh.tokenizer, fresh.device)
    model = Model(lm, answer_ids(fresh.tokenizer, END, ANSWERS)[0], 12)
    test = select_rows(cfg)["test"]
    vectors = collm_mf.load_vectors(tmp_path / "mf")
    mapper = Mapper(8, lm.hidden_size, cfg.mapper_scale)
    mapper.load_state_dict(load_file(tmp_path / "collm" / "mapper.safetensors"))

    def text(rows, idx):
        f = rows.frame[list(idx)]
        return [prompt_tail(h, t, cfg.history, None) for h, t in zip(f["his_title"], f["title"])]

    def full(rows, idx):
        f = rows.frame[list(idx)]
        u, i = vectors.rows(f["user_id"].to_list(), f["title"].to_list())
        mu, mi = mapper(u), mapper(i)
        return [prompt_tail(h, t, cfg.history, (mu[k], mi[k]))
                for k, (h, t) in enumerate(zip(f["his_title"], f["title"]))]

    for prompts, column in ((text, "score_text"), (full, "score")):
        np.testing.assert_allclose(model.score(test, prompts), saved[column].to_numpy(), rtol=1e-4, atol=1e-6)

    again = run(cfg, tmp_path / "collm", tmp_path / "mf")  # finished: read back, not recomputed
    assert again.valid_auc == result.valid_auc and again.eval_seconds == result.eval_seconds
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not an output")
    with pytest.raises(OutputDirError, match="not empty and not an earlier 'baselines-collm' output"):
        run(cfg.model_copy(update={"seed": 1}), foreign, tmp_path / "mf")
    assert (foreign / "notes.txt").read_text() == "not an output"
