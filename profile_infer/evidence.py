"""Does θ carry the user? The validation LM loss with a user's own profile and another's.

On the validation users (their held-out valid-split items), the target NLL is scored
with each user's own θ and with other users' θ (``draws`` seeded derangements, averaged
per user, so the figure does not hang on which other user one draw pairs with), with
every user at the mean θ, and with each user's chosen code vectors in place of θ against
other users' codes. A profile carries the user when the own-θ loss is lower: the gap
(other − own, per user) is reported with a 95% t-interval and a paired t-test p-value.

Besides the loss over every target token, the same forward passes score the feedback
words alone (the first token of " liked" / " disliked"): titles dominate the whole-text
loss, while the feedback word is where a user's like-rate shows. Sources without
ratings have no feedback words, and that part is left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from userip.dataprep.behaviour import DISLIKED, LIKED
from userip.profile_infer.codebooks import assign_chunked

# score(theta (n, T, d), targets) -> {"all": per-user NLL, "words": NLL on the feedback
# words alone, NaN for a user without one}; "words" only when feedback words are scored
Score = Callable[[torch.Tensor, list[list[int]]], dict[str, np.ndarray]]
PARTS = {"all": "theta", "words": "feedback"}  # score key -> evidence section


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


def feedback_words(tokenizer) -> torch.Tensor:
    """Token ids of the feedback words' first tokens, as they follow ": " in a phrase."""
    ids = {tokenizer(f" {w}", add_special_tokens=False).input_ids[0] for w in (LIKED, DISLIKED)}
    if len(ids) != 2:
        raise ValueError(f"' {LIKED}' and ' {DISLIKED}' start with the same token")
    return torch.tensor(sorted(ids))


def code_theta(theta: torch.Tensor, codebooks: list[torch.Tensor], slices) -> torch.Tensor:
    """θ with every profile's soft tokens replaced by the user's chosen code vector."""
    out = theta.clone()
    for cb, sl in zip(codebooks, slices):
        book = cb.detach().float().cpu()
        codes, _ = assign_chunked(theta, sl, book.numpy())
        out[:, sl] = book[torch.as_tensor(codes, dtype=torch.long)].reshape(len(theta), -1,
                                                                           theta.shape[-1])
    return out


def _gaps(score: Score, own_theta: torch.Tensor, targets: list[list[int]],
          others: list[torch.Tensor]) -> dict[str, dict]:
    """Per score part: the own- vs other-profile gap over the users that part has."""
    own = score(own_theta, targets)
    other = [score(own_theta[o], targets) for o in others]
    out = {}
    for key, mine in own.items():
        has = ~np.isnan(mine)
        if has.sum() >= 2:
            theirs = np.mean([o[key] for o in other], axis=0)
            out[key] = gap(mine[has], theirs[has]) | {"n_users": int(has.sum())}
    return out


def lm_evidence(score: Score, theta: torch.Tensor, rows: np.ndarray, targets: list[list[int]],
                codebooks: list[torch.Tensor], slices, seed: int, draws: int = 1) -> dict:
    """The evidence of meta.json; ``rows`` index ``theta``, ``targets`` align with them."""
    n = len(rows)
    if n < 2:
        return {"n_users": n, "note": "fewer than 2 validation users: no gap measured"}
    others = [torch.as_tensor(derangement(n, seed + k)) for k in range(draws)]
    own_theta = theta[torch.as_tensor(rows)]
    thetas = _gaps(score, own_theta, targets, others)
    codes = (_gaps(score, code_theta(own_theta, codebooks, slices), targets, others)
             if codebooks else {})  # none before the codebooks exist (a warm-up-only run)
    mean = score(theta.mean(0, keepdim=True).expand_as(own_theta).contiguous(), targets)
    out: dict = {"n_users": n, "draws": draws}
    for key, section in PARTS.items():
        if key not in thetas:
            continue
        part: dict = {"theta": thetas[key]} | ({"code": codes[key]} if key in codes else {})
        part["mean_theta"] = float(np.nanmean(mean[key]))
        out |= part if key == "all" else {section: part}
    return out | {"note": "validation LM loss (mean target NLL on the valid-split items); "
                          f"other = another user's θ or codes, averaged over {draws} seeded "
                          "derangement(s); feedback: the feedback words' first token alone"}
