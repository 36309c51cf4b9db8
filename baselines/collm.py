"""CoLLM (Zhang et al., TKDE 2025) with MF as its collaborative model (CoLLM-MF), on its
ML-1M temporal split.

Facts from the paper (Sec. IV, V-A3) and the authors' code, as built here:

- Prompt: the authors' ML-1M template (``prompts/collm_movie.txt``): the user's liked titles,
  "... encoded in the feature <UserID>", the target title "with the feature <TargetItemID>",
  then ``Answer with "Yes" or "No".`` and ``#Answer:``. The title list is the user's most
  recent 10 liked titles before the row (TALLRec's length 10, Sec. V-A3), oldest first.
- Stage 1 tunes LoRA (r 8, alpha 16, dropout 0.05 on q/v) on the text-only prompt: the
  template without its two collaborative parts (Sec. IV-B, Eq. 4).
- Loss: BCE on the raw "Yes" logit at the answer position, and the score is its sigmoid
  (the authors' code: ``binary_cross_entropy_with_logits(logits[:, yes_id], label)``; the
  paper: "the likelihood of answering Yes").
- Stage 2 tunes only the mapping MLP (Ω = φ, the paper's default): MF size d -> 10·d ->
  ReLU -> the LM's hidden size, one layer (as in the authors' code) applied to the frozen MF
  user and item vectors, which fill
  the two feature slots as ``Vectors`` segments; LoRA stays frozen ("without fine-tuning
  the LoRA", Sec. IV-B), so the LM runs in eval mode there.
- AdamW with weight decay 1e-3 (the paper's value for every LLM method).

Each stage's epoch is chosen on validation AUC only; test is scored once per stage with the
chosen weights: stage 1 alone (CoLLM's text-only model, TALLRec-like) and the full CoLLM,
on all test rows and on the warm and cold subsets (``MfConfig.warm_min_count``), with the
MF's own scores on the same rows beside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from userip.baselines import collm_mf
from userip.baselines.collm_data import build_split
from userip.baselines.config import CollmConfig
from userip.baselines.lm import Segment, SegmentLM, Text, Vectors, add_lora, answer_ids, save_adapter
from userip.baselines.runs import Once, batches, draw
from userip.profile_infer.model_loading import load_frozen_lm

log = logging.getLogger(__name__)

STAGE = "baselines-collm"
# The template, cut where the two collaborative slots go. HEAD is shared by every prompt
# (scoring runs it once); the text-only prompt drops USER and ITEM with their slots.
HEAD = "#Question: A user has given high ratings to the following movies:"
USER = ". Additionally, we have information about the user's preferences encoded in the feature"
ASK = ". Using all available information, make a prediction about whether the user would enjoy the movie titled "
ITEM = " with the feature"
END = '? Answer with "Yes" or "No".\n#Answer:'
# The answer words as the authors' LLaMA tokenizer writes them (word-initial, "▁Yes"); the
# score reads the first one's logit.
ANSWERS = (" Yes", " No")


@dataclass(frozen=True)
class Rows:
    """One part of the split, subsampled: every column ``collm_data.build_split`` gives, plus
    ``warm`` (bool)."""
    frame: pl.DataFrame

    def __len__(self) -> int:
        return self.frame.height

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy().astype(np.int8)


def select_rows(cfg: CollmConfig) -> dict[str, Rows]:
    """The seeded train/valid/test subsamples (in split order) with their warm flags."""
    data = build_split()
    parts = {p: data.filter(pl.col("split") == p) for p in ("train", "valid", "test")}
    sizes = {"train": cfg.train_samples, "valid": cfg.valid_samples, "test": cfg.test_samples}
    out = {}
    for k, (name, frame) in enumerate(parts.items()):
        # one stream per part, so the valid/test subsamples stay the same whatever train's size
        rows = draw(range(frame.height), sizes[name], np.random.default_rng((cfg.seed, k)),
                    f"collm: {name}_samples")
        picked = frame[rows]
        warm = collm_mf.warm_rows(parts["train"], picked, cfg.mf.warm_min_count)
        out[name] = Rows(picked.with_columns(pl.Series("warm", warm)))
    return out


def _titles(titles: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


def prompt_tail(history: Sequence[str], title: str, history_len: int,
                slots: tuple[torch.Tensor, torch.Tensor] | None) -> list[Segment]:
    """The prompt after ``HEAD``: text only (``slots`` None) or with the mapped user and item
    vectors ([hidden] each) in the two feature slots."""
    liked = " " + _titles(history[-history_len:]) if history_len else ""
    if slots is None:
        return [Text(liked + ASK + f'"{title}"' + END)]
    user, item = slots
    return [Text(liked + USER), Vectors(user[None]), Text(ASK + f'"{title}"' + ITEM),
            Vectors(item[None]), Text(END)]


class Mapper(torch.nn.Module):
    """CoLLM's mapping layer: MF vector -> the LM's token-embedding space (hidden 10x the input)."""

    def __init__(self, dim: int, hidden: int, scale: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, scale * dim), torch.nn.ReLU(),
                                       torch.nn.Linear(scale * dim, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MAPPER = "mapper.safetensors"


def load_mapper(out_dir: Path, dim: int, hidden: int, scale: int) -> Mapper:
    """The mapper a finished run saved in ``out_dir``."""
    mapper = Mapper(dim, hidden, scale)
    mapper.load_state_dict(load_file(Path(out_dir) / MAPPER))
    return mapper


Prompts = Callable[[Rows, Sequence[int]], list[list[Segment]]]
"""The prompt tails of some rows of a part (rebuilt per batch: stage 2's depend on the mapper)."""


def text_prompts(history_len: int) -> Prompts:
    """Stage 1's prompts: the text-only template."""
    def text(rows: Rows, idx: Sequence[int]) -> list[list[Segment]]:
        f = rows.frame[list(idx)]
        return [prompt_tail(h, t, history_len, None) for h, t in zip(f["his_title"], f["title"])]
    return text


def full_prompts(history_len: int, vectors: collm_mf.MfVectors, mapper: Mapper,
                 device: torch.device) -> Prompts:
    """Stage 2's prompts: the MF user and item vectors through ``mapper`` in the two slots."""
    def full(rows: Rows, idx: Sequence[int]) -> list[list[Segment]]:
        f = rows.frame[list(idx)]
        u, i = vectors.rows(f["user_id"].to_list(), f["item"].to_list())
        mu, mi = mapper(u.to(device)), mapper(i.to(device))  # one layer for both slots
        return [prompt_tail(h, t, history_len, (mu[k], mi[k]))
                for k, (h, t) in enumerate(zip(f["his_title"], f["title"]))]
    return full


@dataclass
class Model:
    lm: SegmentLM
    yes: int
    eval_batch_size: int
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})

    def yes_logit(self, tails: list[list[Segment]]) -> torch.Tensor:
        """The raw Yes logit of whole prompts (HEAD + tail), for training."""
        batch = self.lm.embed([[Text(HEAD), *t] for t in tails], padding="left")
        self.tokens["train"] += int(batch.attention_mask.sum())
        return self.lm.answer_logits(batch)[:, self.yes].float()

    def score(self, rows: Rows, prompts: Prompts) -> np.ndarray:
        """sigmoid of the Yes logit per row; HEAD runs once, from the LM's cache, when it is
        a clean token prefix of every prompt."""
        t0 = time.perf_counter()
        with torch.no_grad():
            tails = prompts(rows, list(range(len(rows))))
        scored = self.lm.score_after(HEAD, tails, self.eval_batch_size,
                                     lambda logits: torch.sigmoid(logits[:, self.yes].float()))
        self.tokens["eval"] += scored.tokens
        self.seconds["eval"] += time.perf_counter() - t0
        return scored.scores


@dataclass(frozen=True)
class Tuned:
    valid_auc: list[float]  # per epoch, from 1
    best_epoch: int


def _tune(model: Model, params: list[torch.nn.Parameter], parts: dict[str, Rows], prompts: Prompts,
          epochs: int, lr: float, cfg: CollmConfig, train_mode: bool, what: str) -> Tuned:
    """AdamW on ``params`` with BCE on the Yes logit; keeps the epoch best on valid AUC."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    train = parts["train"]
    labels = torch.tensor(train.labels, dtype=torch.float32, device=model.lm.device)
    valid_auc: list[float] = []
    best = (-1.0, 0, [p.detach().clone() for p in params])
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.lm.model.train(train_mode)
        losses = []
        for idx in batches(torch.randperm(len(train), generator=order).tolist(), cfg.batch_size):
            logit = model.yes_logit(prompts(train, idx))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, labels[list(idx)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.seconds["train"] += time.perf_counter() - t0
        valid = parts["valid"]
        valid_auc.append(float(roc_auc_score(valid.labels, model.score(valid, prompts))))
        log.info("collm %s epoch %d: train BCE %.4f, valid AUC %.4f", what, epoch,
                 float(np.mean(losses)), valid_auc[-1])
        if valid_auc[-1] > best[0]:
            best = (valid_auc[-1], epoch, [p.detach().clone() for p in params])
    with torch.no_grad():
        for p, kept in zip(params, best[2]):
            p.copy_(kept)
    return Tuned(valid_auc, best[1])


@dataclass(frozen=True)
class CollmResult:
    n_train: int
    n_valid: int
    n_test: int
    mf_dir: str
    text_valid_auc: list[float]          # stage 1 (LoRA, text prompts), per epoch from 1
    text_best_epoch: int
    valid_auc: list[float]               # stage 2 (mapper), per epoch from 1
    best_epoch: int
    test_mf: dict[str, dict[str, float]]    # all / warm / cold: auc, logloss, uauc, n
    test_text: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    train_tokens: int                    # LM tokens through forward+backward
    eval_tokens: int                     # LM tokens through forward only
    train_seconds: float
    eval_seconds: float
    out_dir: str


def run(cfg: CollmConfig, out_dir: Path, mf_dir: Path) -> CollmResult:
    """MF (``collm_mf.run`` into ``mf_dir``, reused when finished), then CoLLM's two stages;
    publishes ``out_dir`` with ``adapter/``, ``mapper.safetensors``, ``test_scores.parquet``
    and ``metrics.json`` (an earlier finished run of the same config is returned as is)."""
    return job(cfg, out_dir, mf_dir).run()


def job(cfg: CollmConfig, out_dir: Path, mf_dir: Path) -> Once[CollmResult]:
    """CoLLM-MF on its own ML-1M protocol, as a run published once."""
    config = {**cfg.model_dump(mode="json"), "mf_dir": str(Path(mf_dir).absolute())}
    return Once(out_dir, STAGE, config, CollmResult,
                lambda folder: two_stages(cfg, select_rows(cfg), collm_mf.run(cfg.mf, Path(mf_dir)),
                                          folder, out_dir))


def two_stages(cfg: CollmConfig, parts: dict[str, Rows], mf: collm_mf.MfResult, folder: Path,
               out_dir: Path) -> CollmResult:
    """Stage 1 (LoRA, text prompts) and stage 2 (the mapper over ``mf``'s frozen vectors) on
    ``parts``' train rows, each stage's epoch chosen on valid; test scored once per stage.
    Writes ``adapter/``, ``mapper.safetensors`` and ``test_scores.parquet`` (in test order)."""
    vectors = collm_mf.load_vectors(Path(mf.out_dir))
    torch.manual_seed(cfg.seed)
    loaded = load_frozen_lm(cfg.model, cfg.device)
    lora = add_lora(loaded.model, cfg.lora)
    lm = SegmentLM(lora, loaded.tokenizer, loaded.device)
    model = Model(lm, answer_ids(loaded.tokenizer, END, ANSWERS)[0], cfg.eval_batch_size)

    text = text_prompts(cfg.history)
    lora_params = [p for p in lora.parameters() if p.requires_grad]
    stage1 = _tune(model, lora_params, parts, text, cfg.lora_epochs, cfg.lora_lr, cfg, True, "text")
    test = parts["test"]
    text_scores = model.score(test, text)

    for p in lora_params:
        p.requires_grad_(False)
    mapper = Mapper(mf.dim, lm.hidden_size, cfg.mapper_scale).to(lm.device)
    full = full_prompts(cfg.history, vectors, mapper, lm.device)
    stage2 = _tune(model, list(mapper.parameters()), parts, full, cfg.mapper_epochs, cfg.mapper_lr,
                   cfg, False, "mapper")
    scores = model.score(test, full)

    frame = test.frame
    users, labels, warm = frame["user_id"].to_numpy(), test.labels, frame["warm"].to_numpy()
    u, i = vectors.rows(frame["user_id"].to_list(), frame["item"].to_list())
    mf_scores = torch.sigmoid((u * i).sum(-1)).numpy()
    save_adapter(lora, folder / "adapter")
    save_file({k: v.detach().cpu().contiguous() for k, v in mapper.state_dict().items()},
              folder / MAPPER)
    frame.select("user_id", "title", "label", "warm").with_columns(
        pl.Series("score_mf", mf_scores), pl.Series("score_text", text_scores),
        pl.Series("score", scores)).write_parquet(folder / "test_scores.parquet")
    return CollmResult(
        n_train=len(parts["train"]), n_valid=len(parts["valid"]), n_test=len(test),
        mf_dir=mf.out_dir, text_valid_auc=stage1.valid_auc, text_best_epoch=stage1.best_epoch,
        valid_auc=stage2.valid_auc, best_epoch=stage2.best_epoch,
        test_mf=collm_mf.warm_cold_metrics(users, labels, mf_scores, warm),
        test_text=collm_mf.warm_cold_metrics(users, labels, text_scores, warm),
        test=collm_mf.warm_cold_metrics(users, labels, scores, warm),
        train_tokens=model.tokens["train"], eval_tokens=model.tokens["eval"],
        train_seconds=round(model.seconds["train"], 2), eval_seconds=round(model.seconds["eval"], 2),
        out_dir=str(out_dir))
