"""EM training of the per-user soft tokens (Algorithm 1): the loop, its steps, validation.

Epochs ``0 .. warmup_epochs-1`` minimise ℓ_llm only. Then the codebooks are initialised
by FAISS k-means on θ, the surrogate DCN is warmed on every train interaction with those
codes, and the joint loss of Eq. 7 is minimised until the validation LM loss stops
improving for ``patience`` epochs (at least one) or ``max_epochs`` joint epochs ran.
Each visit of a user trains θ on the next window of their train history.

A joint step takes each term's gradient on θ separately (only ℓ_llm runs the LM
backward; ℓ_vec and ℓ_rec are cheap) and, with ``rec_grad_share``, sets γ so that ℓ_rec
carries that share of θ's gradient: under Adam a fixed small γ leaves ℓ_rec at ~1e-4 of
the update. The norms and γ go to curves.csv. Codebooks follow θ by EMA updates.

Each joint epoch ends with the collapse guard and the validation LM loss; the best joint
epoch is snapshotted (``best``) and restored at the end, so the published profile is
the best epoch's, not the last one's. ``state`` checkpoints let a killed run resume.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from userip.config import ProfileConfig
from userip.profile_infer import distributed as dd
from userip.profile_infer.checkpoint import Checkpointer
from userip.profile_infer.codebooks import (
    EMACodebook,
    assign_chunked,
    kmeans_codebook,
    nearest_codes,
    reseed_dead_codes,
)
from userip.profile_infer.data import ProfileData
from userip.profile_infer.prompt import PromptLayout, pad_targets, per_row_sum, target_nll, token_nll
from userip.profile_infer.state import Progress, TrainState
from userip.profile_infer.surrogate import SurrogateDCN, commitment, rec_loss_sum, straight_through
from userip.profile_infer.theta import RowAdamW, embedding_init, shared_init

log = logging.getLogger(__name__)

SUMS = ("llm", "vec", "rec", "n_inter", "grad_llm", "grad_vec", "grad_rec", "gamma", "batches")
SURROGATE_BATCH = 1024  # interactions per surrogate warm-up step


@dataclass
class Prior:
    """Frozen parts for incremental mode: codebooks and surrogate from a published profile."""

    codebooks: list[torch.Tensor]
    surrogate_state: dict[str, torch.Tensor]
    theta: torch.Tensor | None  # (rows, T, d) warm start for the rows being refreshed, NaN = new


class Trainer:
    def __init__(self, cfg: ProfileConfig, lm, layout: PromptLayout, data: ProfileData,
                 device: torch.device, pad_id: int, fingerprint: str, ckpt_dir: Path,
                 prior: Prior | None = None) -> None:
        self.cfg, self.lm, self.layout, self.data, self.device = cfg, lm, layout, data, device
        self.lm_pad = pad_id
        self.frozen = prior is not None
        self.rank, self.world = dd.world()
        self.n_rows = len(data.user_ids)
        self.rows = torch.arange(self.rank, self.n_rows, self.world)  # owned global rows
        emb = lm.get_input_embeddings().weight
        self.n_tokens = sum(p.n_tokens for p in cfg.profiles)
        self.dim = emb.shape[1]
        if cfg.theta_init == "shared":
            theta = shared_init(self.n_rows, self.n_tokens, emb, self.rows)
        else:
            theta = embedding_init(self.n_rows, self.n_tokens, emb, cfg.seed, self.rows)
        if prior is not None and prior.theta is not None:
            warm = prior.theta[self.rows]
            known = ~torch.isnan(warm).flatten(1).any(1)
            theta[known] = warm[known]
        flat_dims = [p.n_tokens * self.dim for p in cfg.profiles]
        torch.manual_seed(cfg.seed)
        surrogate = SurrogateDCN(len(data.item_ids), flat_dims).to(device)
        self.state = TrainState(
            theta, RowAdamW(theta, cfg.lr, cfg.weight_decay),
            [EMACodebook(p.codebook_size, d, cfg.codebook_decay, device)
             for p, d in zip(cfg.profiles, flat_dims)],
            surrogate, torch.optim.Adam(surrogate.parameters(), lr=cfg.surrogate_lr))
        if prior is not None:
            surrogate.load_state_dict(prior.surrogate_state)
            surrogate.requires_grad_(False)
            for cb, v in zip(self.state.codebooks, prior.codebooks):
                cb.reset(v.to(device), torch.ones(len(v), dtype=torch.float64))
            self.state.progress.codebooks_ready = True
        self.ckpt = Checkpointer(ckpt_dir, fingerprint, self.rank, self.world)

    # ---- views ------------------------------------------------------------------------
    @property
    def progress(self) -> Progress:
        return self.state.progress

    @property
    def theta(self) -> torch.Tensor:
        return self.state.theta

    @property
    def codebooks(self) -> list[torch.Tensor]:
        return [cb.vectors for cb in self.state.codebooks]

    @property
    def surrogate(self) -> SurrogateDCN:
        return self.state.surrogate

    def full_theta(self) -> torch.Tensor:
        return dd.gather_rows(self.state.theta, self.n_rows)

    def _split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a global batch: (global rows, local table indices)."""
        mine = rows[rows % self.world == self.rank]
        return mine, mine // self.world

    def _profile_flat(self, theta: torch.Tensor) -> list[torch.Tensor]:
        return [theta[:, s].reshape(len(theta), -1) for s in self.layout.profile_slices]

    # ---- one global batch -------------------------------------------------------------
    def train_step(self, batch_rows: torch.Tensor, joint: bool) -> dict[str, float]:
        _cfg, st = self.cfg, self.state
        g = len(batch_rows)
        rows, local = self._split(batch_rows)
        theta = st.theta[local].to(self.device).requires_grad_(True)
        out = dict.fromkeys(SUMS, 0.0)
        out["batches"] = float(len(rows) > 0)
        grad = torch.zeros_like(theta)
        if len(rows):
            ids, real = pad_targets([self.data.window(r, self.progress.epoch)
                                     for r in rows.tolist()], self.lm_pad)
            nll, counts = target_nll(self.lm, self.layout, theta, ids, real)
            self.progress.lm_tokens["train"] += self.layout.positions_run(*ids.shape)
            per_user = nll / counts
            (grad_llm,) = torch.autograd.grad(per_user.sum() / g, theta)
            grad += grad_llm
            out["llm"], out["grad_llm"] = per_user.sum().item(), grad_llm.norm().item()
        if joint:
            self._joint(theta, rows, g, grad, out)
        if len(rows):
            st.opt_theta.step(local, grad.cpu())
        return out

    def _joint(self, theta: torch.Tensor, rows: torch.Tensor, g: int, grad: torch.Tensor,
               out: dict[str, float]) -> None:
        """Add α·∇ℓ_vec + γ·∇ℓ_rec to ``grad``; step the surrogate; move the codebooks.

        Every rank calls the same collectives in the same order, with or without rows.
        """
        cfg, st = self.cfg, self.state
        flats = self._profile_flat(theta)
        codes = [nearest_codes(f.detach(), cb.vectors) for f, cb in zip(flats, st.codebooks)]
        pos, items, labels = self.data.interactions(rows.numpy())
        n_global = dd.all_sum(torch.tensor([len(items)], dtype=torch.float64)).item()
        trainable = not self.frozen
        params = list(self.surrogate.parameters()) if trainable else []
        if trainable:
            st.opt_surrogate.zero_grad(set_to_none=True)
        if len(rows):
            vec = sum(commitment(f, cb.vectors, c).sum() for f, cb, c in zip(flats, st.codebooks, codes))
            (grad_vec,) = torch.autograd.grad(cfg.beta * vec / g, theta)
            out["vec"], out["grad_vec"] = vec.item(), grad_vec.norm().item()
            grad += cfg.alpha * grad_vec
        grad_rec = torch.zeros_like(grad)
        if len(items):
            pos_t = torch.as_tensor(pos, device=self.device)
            quantized = [straight_through(f, cb.vectors, c)[pos_t]
                         for f, cb, c in zip(flats, st.codebooks, codes)]
            rec_sum = rec_loss_sum(self.surrogate, torch.as_tensor(items, device=self.device),
                                   torch.as_tensor(labels, device=self.device), quantized)
            got = torch.autograd.grad(rec_sum / max(n_global, 1.0), [theta, *params])
            grad_rec = got[0]
            for p, pg in zip(params, got[1:]):
                p.grad = pg
            out |= {"rec": rec_sum.item(), "n_inter": float(len(items)),
                    "grad_rec": grad_rec.norm().item()}
        # γ from the global batch's norms, so N processes take the steps one process would
        norms = dd.all_sum(torch.stack([grad.pow(2).sum(), grad_rec.pow(2).sum()]).double().cpu())
        gamma = rec_weight(self.cfg, float(norms[0].sqrt()), float(norms[1].sqrt()))
        grad += gamma * grad_rec
        out["gamma"] = gamma * out["batches"]
        if trainable:
            dd.all_sum_grads(params)
            st.opt_surrogate.step()
            for f, cb, c in zip(flats, st.codebooks, codes):
                cb.update(f.detach(), c)

    def fit_shared_start(self) -> None:
        """Tune one θ shared by every user on ``shared_steps`` batches of everyone's text and
        start each user there: what all users have in common (the task, the text format)
        is learned once, so a user's own steps go to what sets them apart."""
        cfg, st = self.cfg, self.state
        shared = st.theta[:1].clone().to(self.device).requires_grad_(True)
        opt = torch.optim.Adam([shared], lr=cfg.shared_lr or cfg.lr)
        batches = self.epoch_batches(-1)
        for step in range(cfg.shared_steps):
            rows, _ = self._split(batches[step % len(batches)])
            opt.zero_grad(set_to_none=True)
            if len(rows):
                ids, real = pad_targets([self.data.window(r, 0) for r in rows.tolist()],
                                        self.lm_pad)
                nll, counts = target_nll(self.lm, self.layout, shared.expand(len(rows), -1, -1),
                                         ids, real)
                self.progress.lm_tokens["train"] += self.layout.positions_run(*ids.shape)
                (nll / counts).sum().backward()
            dd.all_sum_grads([shared])
            opt.step()
        with torch.no_grad():
            st.theta.copy_(shared.detach().cpu().expand_as(st.theta))
        valid = self.valid_loss()
        self.progress.curves.append({"epoch": -1, "phase": "shared", "valid_llm": valid})
        log.info("shared start tuned on %d batches: validation LM loss %.4f", cfg.shared_steps, valid)

    # ---- validation -------------------------------------------------------------------
    @torch.no_grad()
    def score_targets(self, theta: torch.Tensor, targets: list[list[int]],
                      words: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Mean target NLL per row of ``theta`` (n, T, d) on ``targets`` (n lists of ids):
        ``all`` over every target token and, with ``words`` (token ids), ``words`` over
        those tokens alone (NaN for a target without one), both from one forward pass."""
        out = {"all": np.empty(len(targets))} | ({"words": np.empty(len(targets))}
                                                 if words is not None else {})
        step = 2 * self.cfg.batch_size
        for i in range(0, len(targets), step):
            ids, real = pad_targets(targets[i: i + step], self.lm_pad)
            nll, _ = token_nll(self.lm, self.layout, theta[i: i + step].to(self.device), ids, real)
            self.progress.lm_tokens["eval"] += self.layout.positions_run(*ids.shape)
            out["all"][i: i + step] = (per_row_sum(nll, real) / real.sum(1).to(nll.device)).cpu().numpy()
            if words is not None:
                on = torch.isin(ids[real], words).to(nll)
                mean = per_row_sum(nll * on, real) / per_row_sum(on, real)
                out["words"][i: i + step] = mean.cpu().numpy()  # 0/0 = NaN: no such token
        return out

    def valid_loss(self) -> float:
        vr = self.data.valid_rows
        if not len(vr):
            return float("nan")
        mine = np.flatnonzero(vr % self.world == self.rank)
        nll = self.score_targets(self.state.theta[torch.as_tensor(vr[mine] // self.world)],
                                 [self.data.valid_targets[j] for j in mine])["all"]
        total = dd.all_sum(torch.tensor([nll.sum(), len(mine)], dtype=torch.float64))
        return float(total[0] / total[1])

    # ---- codebook init, surrogate warm-up, guard -------------------------------------
    def _assigned_counts(self, full: torch.Tensor, m: int, book: torch.Tensor) -> torch.Tensor:
        """Users per code of ``book`` over all θ, scaled to one batch (the EMA's scale)."""
        codes, _ = assign_chunked(full, self.layout.profile_slices[m], book.cpu().numpy())
        n = np.bincount(codes, minlength=len(book)).astype(np.float64)
        return torch.from_numpy(n * self.cfg.batch_size / max(len(full), 1))

    def init_codebooks(self) -> None:
        full = self.full_theta()
        for m, (spec, cb) in enumerate(zip(self.cfg.profiles, self.state.codebooks)):
            flat = full[:, self.layout.profile_slices[m]].reshape(self.n_rows, -1)
            cents = torch.zeros(tuple(cb.vectors.shape))
            if self.rank == 0:  # one k-means, broadcast: ranks cannot disagree on codebooks
                cents = torch.from_numpy(kmeans_codebook(flat.numpy(), spec.codebook_size,
                                                         self.cfg.seed + m))
            cents = dd.broadcast(cents)
            cb.reset(cents.to(self.device), self._assigned_counts(full, m, cents).to(self.device))
        self.progress.codebooks_ready = True
        log.info("codebooks initialised by k-means on θ (%s)",
                 ", ".join(f"{p.name}: K={p.codebook_size}" for p in self.cfg.profiles))
        self.warm_surrogate(full)

    def warm_surrogate(self, full: torch.Tensor) -> None:
        """Fit the surrogate on every train interaction, users fed their current code
        vectors, so ℓ_rec's first joint gradients come from a model that predicts.

        Every rank runs the same fit on the same (gathered) data, so the surrogate and
        its optimizer state agree across ranks without a broadcast."""
        cfg, pr, model, opt = self.cfg, self.progress, self.surrogate, self.state.opt_surrogate
        pos, items, labels = self.data.interactions(np.arange(self.n_rows))
        if not len(items):
            return
        vectors = []
        for m, cb in enumerate(self.state.codebooks):
            codes, _ = assign_chunked(full, self.layout.profile_slices[m], cb.vectors.cpu().numpy())
            vectors.append(cb.vectors[torch.as_tensor(codes, dtype=torch.long)])
        items_t = torch.as_tensor(items, device=self.device)
        labels_t = torch.as_tensor(labels, device=self.device).float()
        pos_t = torch.as_tensor(pos, device=self.device)

        def loss(s: torch.Tensor) -> torch.Tensor:
            return rec_loss_sum(model, items_t[s], labels_t[s], [v[pos_t[s]] for v in vectors])

        def bce() -> float:
            with torch.no_grad():
                return sum(loss(s).item() for s in torch.split(torch.arange(len(items_t)),
                                                               SURROGATE_BATCH)) / len(items_t)

        rate = labels_t.mean()
        const = F.binary_cross_entropy(rate.expand_as(labels_t), labels_t).item()
        before = bce()
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.surrogate_warmup_epochs):
            for s in torch.split(torch.randperm(len(items_t), generator=gen), SURROGATE_BATCH):
                opt.zero_grad(set_to_none=True)
                (loss(s) / len(s)).backward()
                opt.step()
        pr.surrogate_warmup = {"bce_before": before, "bce_after": bce(), "bce_constant": const,
                               "epochs": float(cfg.surrogate_warmup_epochs)}
        log.info("surrogate warmed on %d train interactions: BCE %.4f -> %.4f (constant "
                 "predictor %.4f)", len(items_t), before, pr.surrogate_warmup["bce_after"], const)

    def guard_codebooks(self) -> int:
        """Re-seed dead codes (rank 0 decides, all ranks copy); returns how many."""
        full = self.full_theta()
        total = 0
        for m, (spec, cb) in enumerate(zip(self.cfg.profiles, self.state.codebooks)):
            book = cb.vectors.detach().cpu()
            flag = torch.zeros(len(book), dtype=torch.int64)  # gloo cannot broadcast bool
            if self.rank == 0:
                new, ids = reseed_dead_codes(full, self.layout.profile_slices[m], book.numpy(),
                                             self.cfg.dead_code_share, self.cfg.seed)
                book, flag[ids] = torch.from_numpy(new), 1
            book, fresh = dd.broadcast(book.contiguous()), dd.broadcast(flag).bool()
            n = int(fresh.sum())
            if not n:
                continue
            cb.reset(book.to(self.device), self._assigned_counts(full, m, book).to(self.device))
            self.progress.reseeded[spec.name] = self.progress.reseeded.get(spec.name, 0) + n
            total += n
            log.warning("profile %s: re-seeded %d dead code(s) %s by splitting the code "
                        "with the most users", spec.name, n, fresh.nonzero()[:, 0].tolist())
        return total

    # ---- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.ckpt.save("state", self.state.state_dict())

    def try_resume(self) -> bool:
        state = self.ckpt.load("state")
        if state is None:
            return False
        self.state.load_state_dict(state)
        log.info("resumed from %s at epoch %d batch %d", self.ckpt.path("state"),
                 self.progress.epoch, self.progress.batch)
        return True

    def restore_best(self) -> None:
        """Load the best joint epoch's snapshot unless the last epoch run is that epoch.

        The snapshot is memory-mapped, so θ is copied in without a second table in RAM.
        """
        pr = self.progress
        if pr.best_epoch < 0 or pr.best_epoch == pr.epoch - 1:
            return
        state = self.ckpt.load("best", mmap=True)
        if state is None or state["epoch"] != pr.best_epoch:
            raise RuntimeError(f"{self.ckpt.path('best')}: no snapshot of the best epoch "
                               f"{pr.best_epoch}; delete {self.ckpt.dir} and run again")
        self.state.load_state_dict(state)
        log.info("restored the best epoch %d (validation LM loss %.4f) over the last one, %d",
                 pr.best_epoch, pr.best_valid, pr.epoch - 1)

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
            pr.curves.append({"epoch": -1, "phase": "init", "valid_llm": self.valid_loss()})
            if cfg.theta_init == "shared" and cfg.shared_steps and not self.frozen:
                self.fit_shared_start()
                self.save_checkpoint()
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

    def _end_epoch(self, joint: bool) -> None:
        pr = self.progress
        tot = dict(zip(SUMS, dd.all_sum(torch.tensor([pr.sums.get(k, 0.0) for k in SUMS],
                                                     dtype=torch.float64)).tolist()))
        reseeded = self.guard_codebooks() if joint and not self.frozen else float("nan")
        valid = self.valid_loss()
        per_batch = max(tot["batches"], 1.0)  # summed over ranks: norms are per rank and batch
        nan = float("nan")
        row = {"epoch": pr.epoch, "phase": "joint" if joint else "warmup",
               "train_llm": tot["llm"] / self.n_rows,
               "train_vec": tot["vec"] / self.n_rows if joint else nan,
               "train_rec": tot["rec"] / max(tot["n_inter"], 1.0) if joint else nan,
               "grad_llm": tot["grad_llm"] / per_batch,
               "grad_vec": tot["grad_vec"] / per_batch if joint else nan,
               "grad_rec": tot["grad_rec"] / per_batch if joint else nan,
               "gamma": tot["gamma"] / per_batch if joint else nan,
               "valid_llm": valid, "reseeded": reseeded,
               "history_coverage": self.data.coverage(pr.epoch + 1)}
        pr.curves.append(row)
        log.info("epoch %d done: %s", pr.epoch, row)
        if joint and not np.isnan(valid):
            if valid < pr.best_valid - 1e-6:
                pr.best_valid, pr.best_epoch, pr.bad_epochs = valid, pr.epoch, 0
                self.ckpt.save("best", self.state.state_dict(optimizers=False))
            else:
                pr.bad_epochs += 1
                if pr.bad_epochs >= max(self.cfg.patience, 1):
                    log.info("validation LM loss stopped improving: early stop")
                    pr.done = True
        pr.epoch += 1
        pr.batch = 0
        pr.sums = {}


def rec_weight(cfg: ProfileConfig, other_norm: float, rec_norm: float) -> float:
    """γ of Eq. 7: fixed, or chosen so that γ·|∇ℓ_rec| is ``rec_grad_share`` of θ's
    gradient (``other_norm``: the norm of the other terms' gradient)."""
    share = cfg.rec_grad_share
    if share is None or rec_norm == 0.0:
        return cfg.gamma
    return share / (1.0 - share) * other_norm / rec_norm
