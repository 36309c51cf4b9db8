"""Does θ carry the user? The validation LM loss with a user's own profile and another's.

On the validation users (their held-out valid-split items), the target NLL is scored
with each user's own θ and with another user's θ (a seeded derangement), with every user
at the mean θ, and with each user's chosen code vectors in place of θ against another
user's codes. A profile carries the user when the own-θ loss is lower: the gap
(other − own, per user) is reported with a 95% t-interval and a paired t-test p-value.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from userip.profile_infer.codebooks import assign_chunked


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point: ``other[i] != i`` (n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    other = np.empty(n, dtype=np.int64)
    other[order] = np.roll(order, -1)
    return other


def gap(own: np.ndarray, other: np.ndarray) -> dict[str, float | list[float]]:
    """Mean per-user gap ``other − own`` with its 95% t-interval and paired p-value."""
    d = other - own
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1)) * se
    p = float(stats.ttest_rel(other, own).pvalue) if se > 0 else float("nan")
    return {"own": float(own.mean()), "other": float(other.mean()), "gap": float(d.mean()),
            "ci95": [float(d.mean()) - half, float(d.mean()) + half], "p_value": p}


def code_theta(theta: torch.Tensor, codebooks: list[torch.Tensor], slices) -> torch.Tensor:
    """θ with every profile's soft tokens replaced by the user's chosen code vector."""
    out = theta.clone()
    for cb, sl in zip(codebooks, slices):
        book = cb.detach().float().cpu()
        codes, _ = assign_chunked(theta, sl, book.numpy())
        out[:, sl] = book[torch.as_tensor(codes, dtype=torch.long)].reshape(len(theta), -1,
                                                                           theta.shape[-1])
    return out


def lm_evidence(score, theta: torch.Tensor, rows: np.ndarray, targets: list[list[int]],
                codebooks: list[torch.Tensor], slices, seed: int) -> dict:
    """``score(theta (n, T, d), targets) -> per-user NLL``; ``rows`` index ``theta``."""
    n = len(rows)
    if n < 2:
        return {"n_users": n, "note": "fewer than 2 validation users: no gap measured"}
    other = torch.as_tensor(derangement(n, seed))
    own_theta = theta[torch.as_tensor(rows)]
    own = score(own_theta, targets)
    mean = score(theta.mean(0, keepdim=True).expand_as(own_theta).contiguous(), targets)
    out: dict = {"n_users": n, "theta": gap(own, score(own_theta[other], targets))}
    if codebooks:  # none before the codebooks exist (a warm-up-only run)
        codes = code_theta(own_theta, codebooks, slices)
        out["code"] = gap(score(codes, targets), score(codes[other], targets))
    return out | {"mean_theta": float(mean.mean()),
                  "note": "validation LM loss (mean target NLL on the valid-split items); "
                          "other = another user's θ or codes (seeded derangement)"}
