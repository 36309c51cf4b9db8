"""``infer``: the library call behind ``userip infer`` (full run or nightly refresh)."""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

import polars as pl
import torch

from userip.config import ProfileConfig
from userip.errors import ConfigError, InputError
from userip.fingerprint import hash_json, hash_paths
from userip.profile_infer import distributed as dd
from userip.profile_infer.codebooks import codes_frame
from userip.profile_infer.data import READS, load_profile_data
from userip.profile_infer.evidence import feedback_words, lm_evidence
from userip.profile_infer.layout import Profile, ProfileEntry, ProfileMeta
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.outputs import explanation, publish
from userip.profile_infer.prompt import build_layout
from userip.profile_infer.train import Prior, Trainer

log = logging.getLogger(__name__)


def read_user_list(path: Path) -> set[str]:
    """User ids for incremental mode: one per line, or a Parquet file with ``user_id``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("user list not found", path=str(path))
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        if "user_id" not in frame.columns:
            raise InputError("missing column", path=str(path), field="user_id")
        users = set(frame["user_id"].cast(pl.String).to_list())
    else:
        users = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    if not users:
        raise InputError("user list is empty", path=str(path))
    return users


def _check_context(lm, layout, cfg: ProfileConfig) -> int:
    """Target budget that fits the model's context; error if even the prefix does not."""
    limit = getattr(lm.config, "max_position_embeddings", None) or 1 << 30
    room = limit - layout.prefix_len
    if room < 1:
        raise ConfigError(f"the prompt prefix ({layout.prefix_len} tokens) does not fit the "
                          f"model context ({limit})")
    if room < cfg.max_target_tokens:
        log.warning("max_target_tokens %d cut to %d to fit the model context",
                    cfg.max_target_tokens, room)
    return min(room, cfg.max_target_tokens)


def infer(cfg: ProfileConfig, data_dir: Path, out_dir: Path, users_file: Path | None = None,
          ckpt_dir: Path | None = None) -> Path:
    """Train per-user soft profiles on a frozen LM and publish ``out_dir``.

    With ``users_file`` (incremental mode) the profile already at ``out_dir`` supplies the
    frozen codebooks and surrogate; only the listed users are optimised and re-coded.
    Checkpoints go to ``ckpt_dir`` (default ``<out_dir>.ckpt``) and a rerun resumes there.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data directory not found: {data_dir}")
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else out_dir.with_name(out_dir.name + ".ckpt")
    names = [p.name for p in cfg.profiles]
    if len(set(names)) != len(names):
        raise ConfigError(f"profile names must be unique: {names}")
    loaded = load_frozen_lm(cfg.model, cfg.device)
    dd.init_from_env(loaded.device)
    torch.set_grad_enabled(True)
    layout = build_layout(loaded.tokenizer, cfg.profiles, cfg.task)
    budget = _check_context(loaded.model, layout, cfg)
    users = read_user_list(users_file) if users_file else None
    base = None
    if users is not None:
        if not ProfileMeta.path(out_dir).is_file():
            raise ConfigError(f"incremental mode needs a published profile at {out_dir}")
        base = Profile.read(out_dir)
        if base.meta.names != names:
            raise ConfigError(f"{out_dir}: profiles {base.meta.names} differ from config")
    data = load_profile_data(data_dir, loaded.tokenizer, budget, users, cfg.valid_max_users,
                             cfg.seed, cfg.evidence_max_users,
                             item_vocab=base.item_ids if base else None)
    # what a checkpoint must match to be resumed: settings, the content of the files read
    # (not the rest of the folder: rejects, items, users), refreshed users
    read = [data_dir / name for name in READS if (data_dir / name).is_file()]
    fingerprint = hash_json({"config": cfg.learned(), "data": hash_paths(read),
                             "users": sorted(users or [])})

    prior = None
    if base is not None:
        old_row = {u: i for i, u in enumerate(base.user_ids)}
        warm = torch.full((len(data.user_ids), *base.theta.shape[1:]), float("nan"))
        for i, u in enumerate(data.user_ids):
            if u in old_row:
                warm[i] = base.theta[old_row[u]]
        prior = Prior(base.codebooks, base.surrogate, warm)

    trainer = Trainer(cfg, loaded.model, layout, data, loaded.device, loaded.tokenizer.pad_token_id,
                      fingerprint, ckpt_dir, prior)
    trainer.try_resume()
    progress = trainer.fit()
    theta = trainer.full_theta()
    fitted = dd.all_sum(torch.tensor([progress.lm_tokens["train"], progress.lm_tokens["eval"]],
                                     dtype=torch.float64))
    rank, world = dd.world()
    if rank == 0:
        eval_before = progress.lm_tokens["eval"]
        codes = codes_frame(data.user_ids, theta, trainer.codebooks, names, layout.profile_slices)
        score = partial(trainer.score_targets,
                        words=feedback_words(loaded.tokenizer) if data.feedback else None)
        evidence = lm_evidence(score, theta, data.evidence_rows, data.evidence_targets,
                               trainer.codebooks, layout.profile_slices, cfg.seed,
                               cfg.evidence_draws)
        log.info("evidence: own vs other θ gap %s", evidence.get("theta"))
        lm_tokens = {"train": int(fitted[0]),
                     "eval": int(fitted[1]) + progress.lm_tokens["eval"] - eval_before}
        user_ids = data.user_ids
        if base is not None:
            theta, user_ids, codes = _merge(base, data.user_ids, theta, codes)
        emb = loaded.model.get_input_embeddings().weight
        explain = explanation(cfg, trainer.codebooks, theta, user_ids, codes, emb,
                              loaded.tokenizer, trainer.dim, data_dir)
        meta = ProfileMeta(
            model=cfg.model, model_path=str(loaded.path), device=str(loaded.device),
            data_dir=str(data_dir.resolve()), dtype=str(loaded.dtype).removeprefix("torch."),
            profiles=[ProfileEntry(name=p.name, K=p.codebook_size, n_tokens=p.n_tokens,
                                   context=p.context) for p in cfg.profiles],
            config_fingerprint=hash_json(cfg.learned()), n_users=len(user_ids),
            n_items=trainer.surrogate.item.num_embeddings, hidden_size=trainer.dim,
            mode="incremental" if base else "full", refreshed_users=len(data.user_ids),
            epochs_run=progress.epoch, early_stopped=progress.done,
            published_epoch=progress.best_epoch if progress.best_epoch >= 0 else progress.epoch - 1,
            best_valid_llm=progress.best_valid if progress.best_epoch >= 0 else None,
            reseeded_codes={p.name: progress.reseeded.get(p.name, 0) for p in cfg.profiles},
            theta_init=cfg.theta_init, history_coverage=data.coverage(progress.epoch),
            surrogate_warmup=progress.surrogate_warmup, evidence=evidence, lm_tokens=lm_tokens,
            skipped=data.skipped, pad_token_fallback=loaded.pad_fallback, world_size=world)
        publish(out_dir, theta=theta, user_ids=user_ids, codebooks=trainer.codebooks,
                surrogate_state=trainer.surrogate.state_dict(), item_ids=data.item_ids, codes=codes,
                curves=(base.curves if base else []) + progress.curves,
                explain=explain, meta=meta)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("published %s (%d users)", out_dir, len(user_ids))
    dd.barrier()
    return out_dir


def _merge(base: Profile, ids: list[str], theta: torch.Tensor, codes: pl.DataFrame):
    """Replace refreshed users' θ and codes in the published profile; append new users."""
    old_row = {u: i for i, u in enumerate(base.user_ids)}
    new = [u for u in ids if u not in old_row]
    merged_ids = base.user_ids + new
    table = torch.cat([base.theta, torch.empty(len(new), *base.theta.shape[1:])])
    new_row = {u: len(base.user_ids) + i for i, u in enumerate(new)}
    index = torch.tensor([old_row[u] if u in old_row else new_row[u] for u in ids])
    table[index] = theta
    kept = base.codes.filter(~pl.col("user_id").is_in(ids))
    merged_codes = (pl.concat([kept, codes.select(kept.columns)])
                    .join(pl.DataFrame({"user_id": merged_ids, "_o": range(len(merged_ids))}),
                          on="user_id").sort("_o").drop("_o"))
    return table, merged_ids, merged_codes
