"""EM training of the per-user soft tokens (Algorithm 1), with checkpoints and resume.

Epochs ``0 .. warmup_epochs-1`` minimise ℓ_llm only; then the codebooks are
initialised by FAISS k-means on θ and the joint loss of Eq. 7 is minimised until the
validation LM loss stops improving for ``patience`` epochs (at least one) or
``max_epochs`` joint epochs ran. Only θ rows of the batch, the codebooks and the
surrogate are trained; the LM is frozen.

Each joint epoch ends with the codebook collapse guard (dead codes re-seeded, see
``codebooks``) and the validation LM loss. The joint epoch with the lowest one is
snapshotted to ``best.*.pt`` beside the checkpoints (θ is too large for a second copy
in memory) and restored when training ends, so the published profile is the best
epoch's, not the last one's.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from profile_infer import distributed as dd
from profile_infer.codebooks import kmeans_codebook, reseed_dead_codes
from profile_infer.data import ProfileData
from profile_infer.prompt import PromptLayout, pad_targets, target_nll
from profile_infer.surrogate import (SurrogateDCN, nearest_codes, rec_loss_sum,
                                     straight_through, vq_loss)
from profile_infer.theta import RowAdamW, embedding_init
from userip.config import ProfileConfig

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training is; saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    codebooks_ready: bool = False
    best_valid: float = float("inf")
    best_epoch: int = -1  # joint epoch saved in the best snapshot; -1 = none yet
    bad_epochs: int = 0
    reseeded: dict[str, int] = field(default_factory=dict)  # dead codes re-seeded, per profile
    done: bool = False
    sums: dict[str, float] = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)


@dataclass
class Prior:
    """Frozen parts for incremental mode: codebooks and surrogate from a published profile."""

    codebooks: list[torch.Tensor]
    surrogate_state: dict[str, torch.Tensor]
    n_surrogate_users: int
    theta: torch.Tensor | None  # (rows, T, d) warm start for the rows being refreshed, NaN = new


class Trainer:
    def __init__(self, cfg: ProfileConfig, lm, layout: PromptLayout, data: ProfileData,
                 device: torch.device, pad_id: int, fingerprint: str, ckpt_dir: Path,
                 prior: Prior | None = None, user_keys: np.ndarray | None = None) -> None:
        self.cfg, self.lm, self.layout, self.data, self.device = cfg, lm, layout, data, device
        self.lm_pad, self.fingerprint, self.ckpt_dir = pad_id, fingerprint, ckpt_dir
        self.frozen = prior is not None
        self.rank, self.world = dd.world()
        self.n_rows = len(data.user_ids)
        self.rows = torch.arange(self.rank, self.n_rows, self.world)  # owned global rows
        self.user_keys = np.arange(self.n_rows) if user_keys is None else user_keys
        emb = lm.get_input_embeddings().weight
        self.n_tokens = sum(p.n_tokens for p in cfg.profiles)
        self.dim = emb.shape[1]
        theta = embedding_init(self.n_rows, self.n_tokens, emb, cfg.seed, self.rows)
        if prior is not None and prior.theta is not None:
            warm = prior.theta[self.rows]
            known = ~torch.isnan(warm).flatten(1).any(1)
            theta[known] = warm[known]
        self.theta = theta
        self.opt_theta = RowAdamW(self.theta, cfg.lr, cfg.weight_decay)
        flat_dims = [p.n_tokens * self.dim for p in cfg.profiles]
        torch.manual_seed(cfg.seed)
        n_sur_users = prior.n_surrogate_users if prior else self.n_rows
        self.surrogate = SurrogateDCN(len(data.item_ids), flat_dims, n_sur_users).to(device)
        self.codebooks = [torch.zeros(p.codebook_size, d, device=device, requires_grad=True)
                          for p, d in zip(cfg.profiles, flat_dims)]
        self.progress = Progress()
        if prior is not None:
            self.surrogate.load_state_dict(prior.surrogate_state)
            with torch.no_grad():
                for cb, v in zip(self.codebooks, prior.codebooks):
                    cb.copy_(v)
            self.surrogate.requires_grad_(False)
            for cb in self.codebooks:
                cb.requires_grad_(False)
            self.progress.codebooks_ready = True
        self.shared = list(self.surrogate.parameters()) + self.codebooks
        self.opt_shared = torch.optim.Adam(self.shared, lr=cfg.lr)

    # ---- one global batch -------------------------------------------------------------
    def _split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a global batch: (global rows, local table indices)."""
        mine = rows[rows % self.world == self.rank]
        return mine, mine // self.world

    def _profile_flat(self, theta: torch.Tensor) -> list[torch.Tensor]:
        return [theta[:, s].reshape(len(theta), -1) for s in self.layout.profile_slices]

    def train_step(self, batch_rows: torch.Tensor, joint: bool) -> dict[str, float]:
        cfg = self.cfg
        g = len(batch_rows)
        rows, local = self._split(batch_rows)
        theta = self.theta[local].to(self.device).requires_grad_(True)
        sums = torch.zeros(4, dtype=torch.float64)  # llm, vec, rec, n_interactions
        loss = torch.zeros((), device=self.device)
        if len(rows):
            ids, real = pad_targets([self.data.targets[r] for r in rows.tolist()],
                                    self.lm_pad)
            nll, counts = target_nll(self.lm, self.layout, theta, ids, real)
            per_user = nll / counts
            loss = per_user.sum() / g
            sums[0] = per_user.sum().item()
        if joint:
            rec_sum, vec_total, n_inter = self._joint_terms(theta, rows)
            n_global = dd.all_sum(torch.tensor([n_inter], dtype=torch.float64)).item()
            loss = loss + cfg.alpha * vec_total / g + cfg.gamma * rec_sum / max(n_global, 1.0)
            sums[1], sums[2], sums[3] = float(vec_total.detach()), float(rec_sum.detach()), n_inter
        if self.shared_trainable(joint):
            self.opt_shared.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        if len(rows):
            self.opt_theta.step(local, theta.grad.cpu())
        if self.shared_trainable(joint):
            dd.all_sum_grads(self.shared)
            self.opt_shared.step()
        return dict(zip(("llm", "vec", "rec", "n_inter"), sums.tolist()))

    def shared_trainable(self, joint: bool) -> bool:
        return joint and not self.frozen

    def _joint_terms(self, theta: torch.Tensor, rows: torch.Tensor):
        if not len(rows):
            return torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0
        flats = self._profile_flat(theta)
        quantized, vec = [], torch.zeros((), device=self.device)
        for flat, cb in zip(flats, self.codebooks):
            codes = nearest_codes(flat.detach(), cb.detach())
            vec = vec + vq_loss(flat, cb, codes, self.cfg.beta).sum()
            quantized.append(straight_through(flat, cb, codes))
        pos, items, labels = self.data.interactions(rows.numpy())
        if not len(items):
            return torch.zeros((), device=self.device), vec, 0
        pos_t = torch.as_tensor(pos, device=self.device)
        keys = torch.as_tensor(self.user_keys[rows.numpy()][pos], device=self.device)
        rec = rec_loss_sum(self.surrogate, keys, torch.as_tensor(items, device=self.device),
                           torch.as_tensor(labels, device=self.device),
                           [q.float()[pos_t] for q in quantized])
        return rec, vec, len(items)

    # ---- validation, codebook init ----------------------------------------------------
    @torch.no_grad()
    def valid_loss(self) -> float:
        vr = self.data.valid_rows
        if not len(vr):
            return float("nan")
        order = np.arange(len(vr))
        mine = order[vr % self.world == self.rank]
        total = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(mine), self.cfg.batch_size):
            part = mine[i: i + self.cfg.batch_size]
            rows = torch.as_tensor(vr[part])
            theta = self.theta[rows // self.world].to(self.device)
            ids, real = pad_targets([self.data.valid_targets[j] for j in part], self.lm_pad)
            nll, counts = target_nll(self.lm, self.layout, theta, ids, real)
            total[0] += (nll / counts).sum().item()
            total[1] += len(part)
        total = dd.all_sum(total)
        return float(total[0] / total[1])

    def full_theta(self) -> torch.Tensor:
        return dd.gather_rows(self.theta, self.n_rows)

    def init_codebooks(self) -> None:
        full = self.full_theta()
        for m, (spec, cb) in enumerate(zip(self.cfg.profiles, self.codebooks)):
            flat = full[:, self.layout.profile_slices[m]].reshape(self.n_rows, -1)
            cents = torch.zeros(tuple(cb.shape))
            if self.rank == 0:  # one k-means, broadcast: ranks cannot disagree on codebooks
                cents = torch.from_numpy(kmeans_codebook(flat.numpy(), spec.codebook_size,
                                                         self.cfg.seed + m))
            with torch.no_grad():
                cb.copy_(dd.broadcast(cents).to(self.device))
        self.progress.codebooks_ready = True
        log.info("codebooks initialised by k-means on θ (%s)",
                 ", ".join(f"{p.name}: K={p.codebook_size}" for p in self.cfg.profiles))

    # ---- checkpoints ------------------------------------------------------------------
    def _ckpt_path(self) -> Path:
        return self.ckpt_dir / f"state.rank{self.rank}of{self.world}.pt"

    def _best_path(self) -> Path:
        return self.ckpt_dir / f"best.rank{self.rank}of{self.world}.pt"

    def _atomic_save(self, state: dict, path: Path) -> None:
        """Write to a temp file and rename: a kill never leaves a torn file at ``path``."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def save_best(self) -> None:
        """Snapshot what gets published (θ, codebooks, surrogate) of the current epoch."""
        self._atomic_save({"fingerprint": self.fingerprint, "epoch": self.progress.epoch,
                           "theta": self.theta,
                           "codebooks": [cb.detach().cpu() for cb in self.codebooks],
                           "surrogate": self.surrogate.state_dict()}, self._best_path())

    def restore_best(self) -> None:
        """Load the best joint epoch's snapshot unless the last epoch run is that epoch.

        The snapshot is memory-mapped, so θ is copied in without a second table in RAM.
        """
        pr = self.progress
        if pr.best_epoch < 0 or pr.best_epoch == pr.epoch - 1:
            return
        path = self._best_path()
        state = torch.load(path, mmap=True, weights_only=True) if path.is_file() else None
        if state is None or state["fingerprint"] != self.fingerprint \
                or state["epoch"] != pr.best_epoch:
            raise RuntimeError(f"{path}: no snapshot of the best epoch {pr.best_epoch}; "
                               f"delete {self.ckpt_dir} and run again")
        self.theta.copy_(state["theta"])
        with torch.no_grad():
            for cb, saved in zip(self.codebooks, state["codebooks"]):
                cb.copy_(saved)
        self.surrogate.load_state_dict(state["surrogate"])
        log.info("restored the best epoch %d (validation LM loss %.4f) over the last one, %d",
                 pr.best_epoch, pr.best_valid, pr.epoch - 1)

    def save_checkpoint(self) -> None:
        state = {
            "fingerprint": self.fingerprint, "theta": self.theta,
            "opt_theta": self.opt_theta.state_dict(),
            "codebooks": [cb.detach().cpu() for cb in self.codebooks],
            "surrogate": self.surrogate.state_dict(), "opt_shared": self.opt_shared.state_dict(),
            "progress": self.progress.__dict__,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
        }
        self._atomic_save(state, self._ckpt_path())

    def try_resume(self) -> bool:
        path = self._ckpt_path()
        if not path.is_file():
            return False
        state = torch.load(path, weights_only=False)
        if state["fingerprint"] != self.fingerprint:
            log.warning("%s belongs to other settings or data; starting afresh", path)
            return False
        self.theta.copy_(state["theta"])
        self.opt_theta.load_state_dict(state["opt_theta"])
        with torch.no_grad():
            for cb, saved in zip(self.codebooks, state["codebooks"]):
                cb.copy_(saved)
        self.surrogate.load_state_dict(state["surrogate"])
        self.opt_shared.load_state_dict(state["opt_shared"])
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        log.info("resumed from %s at epoch %d batch %d", path, self.progress.epoch,
                 self.progress.batch)
        return True

    # ---- the EM loop ------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
        perm = torch.randperm(self.n_rows, generator=gen)
        return list(torch.split(perm, self.cfg.batch_size))

    def fit(self) -> Progress:
        cfg, pr = self.cfg, self.progress
        warmup = 0 if self.frozen else cfg.warmup_epochs
        total_epochs = warmup + cfg.max_epochs
        if not pr.curves and pr.step == 0:  # the starting point of the validation curve
            pr.curves.append({"epoch": -1, "phase": "init", "train_llm": float("nan"),
                              "train_vec": float("nan"), "train_rec": float("nan"),
                              "valid_llm": self.valid_loss(), "reseeded": float("nan")})
        while not pr.done and pr.epoch < total_epochs:
            joint = pr.epoch >= warmup
            if joint and not pr.codebooks_ready:
                self.init_codebooks()
                self.save_checkpoint()
            batches = self.epoch_batches(pr.epoch)
            t0 = time.perf_counter()
            while pr.batch < len(batches):
                out = self.train_step(batches[pr.batch], joint)
                for k, v in out.items():
                    pr.sums[k] = pr.sums.get(k, 0.0) + v
                pr.batch += 1
                pr.step += 1
                if pr.batch % 10 == 0 or pr.batch == len(batches):
                    log.info("epoch %d (%s) batch %d/%d  %.1fs", pr.epoch,
                             "joint" if joint else "warmup", pr.batch, len(batches),
                             time.perf_counter() - t0)
                if pr.step % cfg.checkpoint_every == 0 and pr.batch < len(batches):
                    self.save_checkpoint()
            self._end_epoch(joint)
            self.save_checkpoint()
        self.restore_best()
        return pr

    def guard_codebooks(self) -> int:
        """Re-seed dead codes (rank 0 decides, all ranks copy); returns how many."""
        full = self.full_theta()
        total = 0
        for m, (spec, cb) in enumerate(zip(self.cfg.profiles, self.codebooks)):
            book = cb.detach().cpu()
            flag = torch.zeros(len(book), dtype=torch.int64)  # gloo cannot broadcast bool
            if self.rank == 0:
                new, ids = reseed_dead_codes(full, self.layout.profile_slices[m], book.numpy(),
                                             self.cfg.dead_code_share, self.cfg.seed)
                book, flag[ids] = torch.from_numpy(new), 1
            book, fresh = dd.broadcast(book.contiguous()), dd.broadcast(flag).bool()
            n = int(fresh.sum())
            if not n:
                continue
            with torch.no_grad():
                cb.copy_(book.to(self.device))
            state = self.opt_shared.state.get(cb, {})
            for key in ("exp_avg", "exp_avg_sq"):  # a re-seeded code starts without momentum
                if key in state:
                    state[key][fresh.to(state[key].device)] = 0.0
            self.progress.reseeded[spec.name] = self.progress.reseeded.get(spec.name, 0) + n
            total += n
            log.warning("profile %s: re-seeded %d dead code(s) %s by splitting the code "
                        "with the most users", spec.name, n, fresh.nonzero()[:, 0].tolist())
        return total

    def _end_epoch(self, joint: bool) -> None:
        pr = self.progress
        keys = ("llm", "vec", "rec", "n_inter")
        tot = dd.all_sum(torch.tensor([pr.sums.get(k, 0.0) for k in keys], dtype=torch.float64))
        reseeded = self.guard_codebooks() if joint and not self.frozen else float("nan")
        valid = self.valid_loss()
        row = {"epoch": pr.epoch, "phase": "joint" if joint else "warmup",
               "train_llm": float(tot[0] / self.n_rows),
               "train_vec": float(tot[1] / self.n_rows) if joint else float("nan"),
               "train_rec": float(tot[2] / max(tot[3].item(), 1.0)) if joint else float("nan"),
               "valid_llm": valid, "reseeded": reseeded}
        pr.curves.append(row)
        log.info("epoch %d done: %s", pr.epoch, row)
        if joint and not np.isnan(valid):
            if valid < pr.best_valid - 1e-6:
                pr.best_valid, pr.best_epoch, pr.bad_epochs = valid, pr.epoch, 0
                self.save_best()
            else:
                pr.bad_epochs += 1
                if pr.bad_epochs >= max(self.cfg.patience, 1):
                    log.info("validation LM loss stopped improving: early stop")
                    pr.done = True
        pr.epoch += 1
        pr.batch = 0
        pr.sums = {}
