"""Prompt of Eq. 2 (``x1 θ1 … xM θM D_task`` + target) and the isolation mask of Fig. 4.

The prefix is the same for every user except the soft-token slots, so its token ids,
segment ids and the 4-D mask are built once. Targets are right-padded; with a causal
mask padding never reaches a real position, so one ``(1, 1, L, L)`` mask serves the
whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from userip.config import ProfileSpec
from userip.errors import ConfigError

SHARED = -1  # segment id of a leading BOS token: an attention sink every segment may see


@dataclass(frozen=True)
class PromptLayout:
    prefix_ids: torch.Tensor      # (P,) token ids, 0 at soft-token slots
    theta_slots: torch.Tensor     # (T,) prefix positions of the soft tokens, profile order
    segment: torch.Tensor         # (P,) SHARED, 0..M-1 (x^m and θ^m), or M (D_task)
    profile_slices: tuple[slice, ...]  # per profile: its rows in the T soft tokens
    n_profiles: int

    @property
    def prefix_len(self) -> int:
        return int(self.prefix_ids.numel())


def build_layout(tokenizer, profiles: tuple[ProfileSpec, ...], task: str) -> PromptLayout:
    """Tokenize context phrases and the task phrase once; mark where θ goes."""
    ids: list[int] = []
    seg: list[int] = []
    slots: list[int] = []
    slices = []
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a").input_ids[:1] == [bos]:
        ids.append(bos)
        seg.append(SHARED)
    for m, spec in enumerate(profiles):
        phrase = f" {spec.context}" if m and spec.context[:1].isalnum() else spec.context
        ctx = tokenizer(phrase, add_special_tokens=False).input_ids
        if not ctx:
            raise ConfigError(f"profile {spec.name!r}: context phrase tokenizes to nothing")
        ids += ctx
        seg += [m] * len(ctx)
        start = len(slots)
        slots += range(len(ids), len(ids) + spec.n_tokens)
        ids += [0] * spec.n_tokens
        seg += [m] * spec.n_tokens
        slices.append(slice(start, start + spec.n_tokens))
    task_ids = tokenizer(task, add_special_tokens=False).input_ids
    if not task_ids:
        raise ConfigError("profile.task tokenizes to nothing")
    ids += task_ids
    seg += [len(profiles)] * len(task_ids)
    return PromptLayout(torch.tensor(ids), torch.tensor(slots), torch.tensor(seg),
                        tuple(slices), len(profiles))


def isolation_mask(layout: PromptLayout, target_len: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """Additive (1, 1, L, L) mask: 0 where attention is allowed, dtype-min elsewhere.

    Query q may see key k <= q when k is the shared BOS, when both are in the same
    profile segment, or when q is in D_task or the target (segment M).
    """
    m_task = layout.n_profiles
    seg = torch.cat([layout.segment, torch.full((target_len,), m_task)]).to(device)
    n = seg.numel()
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    same = seg[:, None] == seg[None, :]
    allowed = causal & (same | (seg[None, :] == SHARED) | (seg[:, None] == m_task))
    mask = torch.zeros(n, n, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def pad_targets(targets: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to (B, Lt) ids and a bool mask of real tokens."""
    width = max(len(t) for t in targets)
    ids = torch.full((len(targets), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(targets), width), dtype=torch.bool)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        real[i, : len(t)] = True
    return ids, real


def token_nll(lm, layout: PromptLayout, theta: torch.Tensor, target_ids: torch.Tensor,
              target_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every real target token given soft tokens ``theta`` (B, T, d).

    The LM head runs only on the positions that predict a target token. Returns the NLLs
    ``(N,)`` in row-major order of ``target_real``'s true entries, and the last hidden states.
    """
    dev = theta.device
    emb = lm.get_input_embeddings()
    dtype = emb.weight.dtype
    b, lt = target_ids.shape
    p = layout.prefix_len
    prefix = emb(layout.prefix_ids.to(dev)).expand(b, -1, -1).clone()
    prefix[:, layout.theta_slots.to(dev)] = theta.to(dtype)
    inputs = torch.cat([prefix, emb(target_ids.to(dev))], dim=1)
    mask = isolation_mask(layout, lt, dtype, dev)
    positions = torch.arange(p + lt, device=dev)[None]
    decoder = getattr(lm, lm.base_model_prefix)
    hidden = decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                     use_cache=False).last_hidden_state
    real = target_real.to(dev)
    predicting = hidden[:, p - 1: p + lt - 1][real]
    logits = lm.get_output_embeddings()(predicting).float()
    return F.cross_entropy(logits, target_ids.to(dev)[real], reduction="none"), hidden


def per_row_sum(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sum per row of ``real`` (B, L) of ``values`` given for its true entries, row-major."""
    b = real.shape[0]
    owner = torch.arange(b, device=values.device)[:, None].expand_as(real)[real.to(values.device)]
    return torch.zeros(b, device=values.device, dtype=values.dtype).index_add(0, owner, values)


def target_nll(lm, layout: PromptLayout, theta: torch.Tensor, target_ids: torch.Tensor,
               target_real: torch.Tensor, return_hidden: bool = False):
    """Per-user summed and counted target cross-entropy (``token_nll`` summed per row).

    Returns ``(nll_sum (B,), n_tokens (B,))`` and, when asked, the last hidden states.
    """
    nll, hidden = token_nll(lm, layout, theta, target_ids, target_real)
    nll_sum = per_row_sum(nll, target_real)
    counts = target_real.sum(1).to(theta.device)
    if return_hidden:
        return nll_sum, counts, hidden
    return nll_sum, counts
