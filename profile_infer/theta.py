"""Per-user soft tokens θ in host memory, with a row-wise AdamW.

The table is (rows, T, d) on the CPU, T = total soft tokens over profiles; a batch's
rows are gathered to the device and their gradients scattered back. GPU memory thus
does not grow with the number of users. The optimizer keeps Adam moments and a step
count per row and touches only the rows of the batch: absent users get neither weight
decay nor momentum drift (plain torch AdamW would move every row with a moment).
"""

from __future__ import annotations

import torch

INIT_CHUNK = 4096  # rows drawn per generator seed, so a shard draws exactly its rows' values


def shared_init(n_rows: int, n_tokens: int, embeddings: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Every θ row starts at the LM's mean input embedding: differences between users
    then come from their data alone, not from where their random start happened to be."""
    mean = embeddings.detach().float().cpu().mean(0)
    n = n_rows if rows is None else len(rows)
    return mean.expand(n, n_tokens, -1).clone()


def embedding_init(n_rows: int, n_tokens: int, embeddings: torch.Tensor, seed: int,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
    """θ ~ N(mean, std) per dimension of the LM's input embedding matrix, seeded per chunk
    (the ``theta_init: random`` ablation).

    ``rows`` (global row ids) selects a shard; a row's value does not depend on the shard.
    """
    emb = embeddings.detach().float().cpu()
    mean, std = emb.mean(0), emb.std(0)
    rows = torch.arange(n_rows) if rows is None else rows
    out = torch.empty(len(rows), n_tokens, emb.shape[1])
    for chunk in torch.unique(rows // INIT_CHUNK).tolist():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        block = torch.randn(INIT_CHUNK, n_tokens, emb.shape[1], generator=gen)
        pick = (rows // INIT_CHUNK) == chunk
        out[pick] = block[rows[pick] % INIT_CHUNK]
    return out * std + mean


class RowAdamW:
    """AdamW over rows of a host tensor; only the rows passed to ``step`` change."""

    def __init__(self, table: torch.Tensor, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.table = table
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = torch.zeros_like(table)
        self.exp_avg_sq = torch.zeros_like(table)
        self.steps = torch.zeros(table.shape[0], dtype=torch.int64)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Update ``table[rows]`` (unique local row indices) with their gradients."""
        b1, b2 = self.betas
        grad = grad.detach().to(self.table.device, torch.float32)
        self.steps[rows] += 1
        t = self.steps[rows].to(torch.float32).view(-1, *([1] * (grad.dim() - 1)))
        theta = self.table[rows]
        theta.mul_(1 - self.lr * self.wd)
        m = self.exp_avg[rows].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.exp_avg_sq[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v / (1 - b2 ** t)).sqrt_().add_(self.eps)
        theta.addcdiv_(m / (1 - b1 ** t), denom, value=-self.lr)
        self.table[rows], self.exp_avg[rows], self.exp_avg_sq[rows] = theta, m, v

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps.copy_(state["steps"])
