"""Is there a personal LM signal for any per-user step to find? A first-order test.

At the shared start θ₀ (the real ``Trainer``'s ``fit_shared_start``), take per user u the
gradient g_t(u) of their train-history LM loss (the mean over every window of their
history: what the per-user steps see over the epochs) and the gradient g_v(u) of their
validation loss (the evidence window). A per-user step Δ_u = −η·s(g_t(u)) changes the
own- vs other-θ gap on u's validation text by, to first order in η,

    η · d_u,   d_u = g_v(u)·s(g_t(u)) − mean_{w≠u} g_v(u)·s(g_t(w)),

so the mean of d_u over users and its t-statistic say whether that step direction can
open a gap at all, and with how many users it would be resolved, before any training run.
``s`` is one of the step rules: ``sgd`` (the gradient), ``diag`` (divided by the users'
RMS gradient per coordinate: Adam with a fixed preconditioner), ``sign`` (Adam's first
steps), ``pca1`` / ``pca4`` (the gradient's part on the top principal directions of the
users' centred train gradients: θ = θ₀ + a low-rank per-user δ). Each is tried with the
gradient of the whole text and of the feedback words alone, against the validation loss
over the whole text and over the feedback words.

Control: the same statistic between each user's even- and odd-numbered train windows
(users with two or more windows) shows that the test finds a signal where one exists.

Prints one JSON object. Usage (the README's run):
    python bench/profile_signal.py --config configs/demo.yaml --data runs/demo/prepare/<key> \\
        --users 128 --set profile.max_target_tokens=128 --set profile.shared_steps=30 \\
        --set profile.shared_lr=0.01 \\
        --set 'profile.task=". Movies this user rated, each marked liked or disliked:"'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from profile_steps import subset_trainer
from safetensors.torch import load_file, save_file
from scipy import stats

from userip.profile_infer.evidence import feedback_words
from userip.profile_infer.prompt import pad_targets, per_row_sum, token_nll


def gradients(trainer, theta0: torch.Tensor, targets: list[list[int]], words: torch.Tensor,
              batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target list: ∂(mean NLL)/∂θ and ∂(mean feedback-word NLL)/∂θ at θ₀, flattened
    (a target without a feedback word gets a zero words gradient)."""
    every, feedback = [], []
    for i in range(0, len(targets), batch):
        ids, real = pad_targets(targets[i: i + batch], trainer.lm_pad)
        theta = theta0.expand(len(ids), -1, -1).clone().requires_grad_(True)
        nll, _ = token_nll(trainer.lm, trainer.layout, theta, ids, real)
        on = torch.isin(ids[real], words).to(nll)
        mean_all = per_row_sum(nll, real) / real.sum(1)
        mean_words = per_row_sum(nll * on, real) / per_row_sum(on, real).clamp(min=1.0)
        g_all = torch.autograd.grad(mean_all.sum(), theta, retain_graph=True)[0]
        g_words = torch.autograd.grad(mean_words.sum(), theta)[0]
        every.append(g_all.flatten(1).double())
        feedback.append(g_words.flatten(1).double())
    return torch.cat(every), torch.cat(feedback)


def own_vs_other(valid: torch.Tensor, step: torch.Tensor) -> dict[str, float]:
    """Mean over users of d_u (module docstring) with its t-statistic and p-value."""
    s = valid @ step.T
    own = s.diagonal()
    d = (own - (s.sum(1) - own) / (len(s) - 1)).numpy()
    t = stats.ttest_1samp(d, 0.0)
    return {"mean_d": float(d.mean()), "t": round(float(t.statistic), 2),
            "p_value": float(t.pvalue), "n_users": len(d)}


def step_rules(g: torch.Tensor) -> dict[str, torch.Tensor]:
    rms = g.pow(2).mean(0).sqrt()
    _, _, vt = torch.linalg.svd(g - g.mean(0), full_matrices=False)
    return {"sgd": g, "diag": g / (rms + 1e-12), "sign": torch.sign(g),
            "pca1": (g @ vt[:1].T) @ vt[:1], "pca4": (g @ vt[:4].T) @ vt[:4]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a prepared data set folder")
    ap.add_argument("--users", type=int, default=128, help="the first N users by user_idx")
    ap.add_argument("--batch", type=int, default=16, help="texts per forward/backward")
    ap.add_argument("--theta0", type=Path, help="a safetensors file: the shared start is "
                    "read from it if it exists, else tuned and written there")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides, _cfg, lm, data, trainer = subset_trainer(args.config, args.data, args.users, args.set)
    t0 = time.perf_counter()
    if args.theta0 and args.theta0.is_file():
        theta0 = load_file(args.theta0)["theta0"]
    else:
        trainer.fit_shared_start()
        theta0 = trainer.theta[0].clone()
        if args.theta0:
            save_file({"theta0": theta0.contiguous()}, args.theta0)
    words = feedback_words(lm.tokenizer)
    rows = [int(r) for r in data.evidence_rows]
    valid_all, valid_words = gradients(trainer, theta0, data.evidence_targets, words, args.batch)
    pairs = [(u, k) for u, r in enumerate(rows) for k in range(len(data.windows[r]))]
    g_all, g_words = gradients(trainer, theta0, [data.windows[rows[u]][k] for u, k in pairs],
                               words, args.batch)
    user = torch.tensor([u for u, _ in pairs])
    parity = torch.tensor([k % 2 for _, k in pairs])

    def per_user(g: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(rows), g.shape[1], dtype=g.dtype).index_add(0, user[pick], g[pick])
        return total / torch.bincount(user[pick], minlength=len(rows)).clamp(min=1)[:, None].to(g)

    every = torch.ones(len(pairs), dtype=torch.bool)
    out: dict = {}
    for train_part, g in (("all", g_all), ("words", g_words)):
        for rule, step in step_rules(per_user(g, every)).items():
            for valid_part, v in (("all", valid_all), ("words", valid_words)):
                out[f"train_{train_part}/{rule}/valid_{valid_part}"] = own_vs_other(v, step)
    two = torch.bincount(user, minlength=len(rows)) >= 2
    for train_part, g in (("all", g_all), ("words", g_words)):
        even, odd = per_user(g, parity == 0)[two], per_user(g, parity == 1)[two]
        out[f"control_even_vs_odd_windows/{train_part}"] = own_vs_other(even, odd)
    print(json.dumps({"users": len(rows), "train_windows": len(pairs), "overrides": overrides,
                      "seconds": round(time.perf_counter() - t0), "first_order": out}, indent=1))


if __name__ == "__main__":
    main()
