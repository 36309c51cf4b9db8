"""TALLRec (Bao et al., RecSys 2023) on its own MovieLens-100K protocol.

K training samples are drawn (seeded) from the train part; LoRA is tuned with the LM loss
over the whole prompt and its answer ("Yes." / "No." and eos); the score is P("Yes") of the
Yes/No softmax at the answer position (the template head shared by all prompts runs once
per scoring pass). The epoch (0 = the untuned LM) is chosen on validation AUC; test is
scored once, with the chosen adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

from userip.baselines.config import TallrecConfig
from userip.baselines.lm import SegmentLM, Text, add_lora, answer_ids, save_adapter, yes_share
from userip.baselines.runs import Once, batches, draw
from userip.baselines.tallrec_data import HEAD, TAIL, Sample, build_samples, split_samples
from userip.downstream.metrics import ctr_metrics
from userip.profile_infer.model_loading import load_frozen_lm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TallrecResult:
    shots: int
    seed: int
    n_train: int
    n_valid: int
    n_test: int
    valid_auc: list[float]     # per epoch; index 0 is the LM before tuning
    best_epoch: int
    test: dict[str, float]     # auc, logloss, uauc, n
    train_tokens: int          # LM tokens through forward+backward
    eval_tokens: int           # LM tokens through forward only
    train_seconds: float
    eval_seconds: float
    out_dir: str


@dataclass(frozen=True)
class Parts:
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]


def select_parts(cfg: TallrecConfig) -> Parts:
    """The K-shot train set and the valid/test subsamples of the authors' split, seeded."""
    splits = split_samples(build_samples())
    # one stream per part, so the valid/test subsamples stay the same whatever K is
    rng = [np.random.default_rng((cfg.seed, part)) for part in range(3)]
    return Parts(draw(splits.train, cfg.shots, rng[0], "tallrec: shots"),
                 draw(splits.valid, cfg.valid_samples, rng[1], "tallrec: valid_samples"),
                 draw(splits.test, cfg.test_samples, rng[2], "tallrec: test_samples"))


class Scorer:
    """P("Yes") for TALLRec prompts, counting the tokens it runs. The template head that
    every prompt shares runs once per call and is reused from the LM's cache, unless the
    tokenizer merges tokens across its boundary (then every prompt runs whole)."""

    def __init__(self, lm: SegmentLM, batch_size: int, context: str) -> None:
        self.lm, self.batch_size, self.tokens = lm, batch_size, 0
        self.yes_no = answer_ids(lm.tokenizer, context, ["Yes", "No"])

    def __call__(self, samples: Sequence[Sample]) -> np.ndarray:
        scored = self.lm.score_after(HEAD, [[Text(s.input + TAIL)] for s in samples], self.batch_size,
                                     lambda logits: yes_share(logits, self.yes_no))
        self.tokens += scored.tokens
        return scored.scores


def _auc(samples: Sequence[Sample], scores: np.ndarray) -> float:
    return float(roc_auc_score([s.label for s in samples], scores))


STAGE = "baselines-tallrec"


def run(cfg: TallrecConfig, out_dir: Path) -> TallrecResult:
    """Tune and score TALLRec; publishes ``out_dir`` with ``adapter/``, ``test_scores.parquet``
    and ``metrics.json`` (an earlier finished run of the same config is returned as is)."""
    return job(cfg, out_dir).run()


def job(cfg: TallrecConfig, out_dir: Path) -> Once[TallrecResult]:
    """TALLRec on its own protocol (``select_parts``), as a run published once."""
    return Once(out_dir, STAGE, cfg.model_dump(mode="json"), TallrecResult,
                lambda folder: tune_and_score(cfg, select_parts(cfg), folder, out_dir))


def tune_and_score(cfg: TallrecConfig, parts: Parts, folder: Path, out_dir: Path) -> TallrecResult:
    """K-shot LoRA on ``parts.train``, the epoch chosen on ``parts.valid``, ``parts.test`` scored
    once; writes ``adapter/`` and ``test_scores.parquet`` (in ``parts.test`` order) into ``folder``."""
    torch.manual_seed(cfg.seed)
    loaded = load_frozen_lm(cfg.model, cfg.device)
    model = add_lora(loaded.model, cfg.lora)
    lm = SegmentLM(model, loaded.tokenizer, loaded.device)
    score = Scorer(lm, cfg.eval_batch_size, parts.valid[0].prompt)
    eos = loaded.tokenizer.eos_token or ""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)

    t_eval = time.perf_counter()
    valid_auc = [_auc(parts.valid, score(parts.valid))]
    eval_s = time.perf_counter() - t_eval
    best = (valid_auc[0], 0, [p.detach().clone() for p in trainable])
    train_s, train_tokens = 0.0, 0
    log.info("tallrec K=%d: epoch 0 valid AUC %.4f", cfg.shots, valid_auc[0])
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(parts.train), generator=order).tolist()
        losses = []
        for chunk in batches([parts.train[i] for i in perm], cfg.batch_size):
            batch = lm.embed([[Text(s.prompt + s.output + eos)] for s in chunk], padding="right")
            train_tokens += int(batch.attention_mask.sum())
            loss = lm.lm_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        train_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        valid_auc.append(_auc(parts.valid, score(parts.valid)))
        eval_s += time.perf_counter() - t0
        log.info("tallrec K=%d: epoch %d train loss %.4f valid AUC %.4f",
                 cfg.shots, epoch, float(np.mean(losses)), valid_auc[-1])
        if valid_auc[-1] > best[0]:
            best = (valid_auc[-1], epoch, [p.detach().clone() for p in trainable])
    with torch.no_grad():
        for p, kept in zip(trainable, best[2]):
            p.copy_(kept)

    t0 = time.perf_counter()
    test_scores = score(parts.test)
    eval_s += time.perf_counter() - t0
    labels = np.array([s.label for s in parts.test], dtype=np.int8)
    users = np.array([s.user_id for s in parts.test])
    save_adapter(model, folder / "adapter")
    pl.DataFrame({"user_id": users, "item_id": [s.item_id for s in parts.test],
                  "label": labels, "score": test_scores}).write_parquet(folder / "test_scores.parquet")
    return TallrecResult(
        shots=cfg.shots, seed=cfg.seed, n_train=len(parts.train), n_valid=len(parts.valid),
        n_test=len(parts.test), valid_auc=valid_auc, best_epoch=best[1],
        test=ctr_metrics(users, labels, test_scores), train_tokens=train_tokens,
        eval_tokens=score.tokens, train_seconds=round(train_s, 2), eval_seconds=round(eval_s, 2),
        out_dir=str(out_dir))
