"""TALLRec (Bao et al., RecSys 2023) on its own MovieLens-100K protocol.

K training samples are drawn (seeded) from the train part; LoRA is tuned with the LM loss
over the whole prompt and its answer ("Yes." / "No." and eos); the score is P("Yes") of the
Yes/No softmax at the answer position (the template head shared by all prompts runs once
per scoring pass). The epoch (0 = the untuned LM) is chosen on validation AUC; test is
scored once, with the chosen adapter.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

from userip.baselines.config import TallrecConfig
from userip.baselines.lm import SegmentLM, Text, add_lora, answer_ids, save_adapter, splits_cleanly
from userip.baselines.tallrec_data import HEAD, TAIL, Sample, build_samples, split_samples
from userip.downstream.metrics import ctr_metrics
from userip.errors import ConfigError
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


def draw(samples: Sequence[Sample], n: int | None, rng: np.random.Generator, what: str) -> list[Sample]:
    """``n`` samples drawn without replacement, kept in list order (all when ``n`` is None)."""
    if n is None:
        return list(samples)
    if n > len(samples):
        raise ConfigError(f"tallrec: {what} asks for {n} samples; the protocol has {len(samples)}")
    return [samples[i] for i in np.sort(rng.choice(len(samples), size=n, replace=False))]


def select_parts(cfg: TallrecConfig) -> Parts:
    """The K-shot train set and the valid/test subsamples of the authors' split, seeded."""
    splits = split_samples(build_samples())
    # one stream per part, so the valid/test subsamples stay the same whatever K is
    rng = [np.random.default_rng((cfg.seed, part)) for part in range(3)]
    return Parts(draw(splits.train, cfg.shots, rng[0], "shots"),
                 draw(splits.valid, cfg.valid_samples, rng[1], "valid_samples"),
                 draw(splits.test, cfg.test_samples, rng[2], "test_samples"))


def _batches(items: Sequence[Sample], size: int) -> Iterator[Sequence[Sample]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Scorer:
    """P("Yes") for TALLRec prompts, counting the tokens it runs. The template head that
    every prompt shares runs once per call and is reused from the LM's cache, unless the
    tokenizer merges tokens across its boundary (then every prompt runs whole)."""

    def __init__(self, lm: SegmentLM, batch_size: int, context: str) -> None:
        self.lm, self.batch_size, self.tokens = lm, batch_size, 0
        self.yes_no = answer_ids(lm.tokenizer, context, ["Yes", "No"])

    @torch.no_grad()
    def __call__(self, samples: Sequence[Sample]) -> np.ndarray:
        self.lm.model.eval()
        reuse = all(splits_cleanly(self.lm.tokenizer, HEAD, s.input + TAIL) for s in samples)
        prefix = self.lm.prefix([Text(HEAD)]) if reuse else None
        if prefix is not None:
            self.tokens += prefix.length
        out = []
        for chunk in _batches(samples, self.batch_size):
            texts = [[Text(s.input + TAIL if reuse else s.prompt)] for s in chunk]
            batch = self.lm.embed(texts, padding="left", continuation=reuse)
            self.tokens += int(batch.attention_mask.sum())
            out.append(self.lm.yes_prob(batch, self.yes_no, prefix).cpu().numpy())
        return np.concatenate(out)


def _auc(samples: Sequence[Sample], scores: np.ndarray) -> float:
    return float(roc_auc_score([s.label for s in samples], scores))


def run(cfg: TallrecConfig, out_dir: Path) -> TallrecResult:
    """Tune and score TALLRec; writes ``adapter/``, ``test_scores.parquet``, ``metrics.json``."""
    parts = select_parts(cfg)
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
        for chunk in _batches([parts.train[i] for i in perm], cfg.batch_size):
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
    out_dir.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out_dir / "adapter")
    pl.DataFrame({"user_id": users, "item_id": [s.item_id for s in parts.test],
                  "label": labels, "score": test_scores}).write_parquet(out_dir / "test_scores.parquet")
    result = TallrecResult(
        shots=cfg.shots, seed=cfg.seed, n_train=len(parts.train), n_valid=len(parts.valid),
        n_test=len(parts.test), valid_auc=valid_auc, best_epoch=best[1],
        test=ctr_metrics(users, labels, test_scores), train_tokens=train_tokens,
        eval_tokens=score.tokens, train_seconds=round(train_s, 2), eval_seconds=round(eval_s, 2),
        out_dir=str(out_dir))
    (out_dir / "metrics.json").write_text(json.dumps(
        {"config": cfg.model_dump(mode="json"), "result": asdict(result)}, indent=2))
    return result
