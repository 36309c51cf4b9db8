"""Prompt of Eq. 2 (``x1 θ1 … xM θM D_task`` + target) and the isolation mask of Fig. 4.

The prefix is the same for every user except the soft-token slots, so its token ids,
segment ids and the 4-D mask are built once. Targets are right-padded; with a causal
mask padding never reaches a real position, so one ``(1, 1, L, L)`` mask serves the
whole batch.

Under the isolation mask a context phrase ``x^m`` sees only itself (and a leading BOS):
its hidden states are the same for every user and every θ. ``token_nll`` therefore runs
those positions once, as a batch of one, and hands their keys and values to the batch's
forward as a cache: a quarter of the demo prompt's positions (11 of 42) are not
recomputed per row, in training and in scoring alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

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
    constant: torch.Tensor        # prefix positions no soft token reaches: BOS, every x^m

    @property
    def prefix_len(self) -> int:
        return int(self.prefix_ids.numel())

    def variable(self, target_len: int) -> torch.Tensor:
        """Positions of the prompt with a target of ``target_len`` that θ reaches: the soft
        tokens, D_task and the target."""
        reached = torch.ones(self.prefix_len + target_len, dtype=torch.bool)
        reached[self.constant] = False
        return reached.nonzero()[:, 0]

    def positions_run(self, batch: int, target_len: int) -> int:
        """LM input positions ``token_nll`` runs for a batch: the context phrases once,
        the rest once per row (the offline-cost count of meta.json's ``lm_tokens``)."""
        return len(self.constant) + batch * len(self.variable(target_len))


def build_layout(tokenizer, profiles: tuple[ProfileSpec, ...], task: str) -> PromptLayout:
    """Tokenize context phrases and the task phrase once; mark where θ goes."""
    ids: list[int] = []
    seg: list[int] = []
    slots: list[int] = []
    slices = []
    constant: list[int] = []
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a").input_ids[:1] == [bos]:
        constant.append(len(ids))
        ids.append(bos)
        seg.append(SHARED)
    for m, spec in enumerate(profiles):
        phrase = f" {spec.context}" if m and spec.context[:1].isalnum() else spec.context
        ctx = tokenizer(phrase, add_special_tokens=False).input_ids
        if not ctx:
            raise ConfigError(f"profile {spec.name!r}: context phrase tokenizes to nothing")
        constant += range(len(ids), len(ids) + len(ctx))
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
                        tuple(slices), len(profiles), torch.tensor(constant, dtype=torch.long))


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


def _constant_cache(decoder, config, inputs: torch.Tensor, mask: torch.Tensor,
                    positions: torch.Tensor, batch: int) -> tuple[DynamicCache, torch.Tensor]:
    """Run the θ-independent positions once; their keys/values expanded to ``batch`` rows
    as a fresh cache (the forward that gets it appends to it), and their hidden states."""
    with torch.no_grad():
        out = decoder(inputs_embeds=inputs[None], attention_mask=mask[None, None],
                      position_ids=positions[None], use_cache=True)
    kv = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
          for layer in out.past_key_values.layers]
    return DynamicCache(ddp_cache_data=kv, config=config), out.last_hidden_state


def token_nll(lm, layout: PromptLayout, theta: torch.Tensor, target_ids: torch.Tensor,
              target_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every real target token given soft tokens ``theta`` (B, T, d).

    The context phrases come from a cache of one row (see the module docstring); the LM
    head runs only on the positions that predict a target token. Returns the NLLs ``(N,)``
    in row-major order of ``target_real``'s true entries, and the last hidden states of
    every prompt position ``(B, P + Lt, d)``.
    """
    dev = theta.device
    emb = lm.get_input_embeddings()
    dtype = emb.weight.dtype
    b, lt = target_ids.shape
    p = layout.prefix_len
    const, var = layout.constant.to(dev), layout.variable(lt).to(dev)
    prefix = emb(layout.prefix_ids.to(dev)).expand(b, -1, -1).clone()
    prefix[:, layout.theta_slots.to(dev)] = theta.to(dtype)
    inputs = torch.cat([prefix, emb(target_ids.to(dev))], dim=1)
    mask = isolation_mask(layout, lt, dtype, dev)[0, 0]
    decoder = getattr(lm, lm.base_model_prefix)
    cache, const_hidden = _constant_cache(decoder, lm.config, inputs[0, const],
                                          mask[const][:, const], const, b)
    keys = torch.cat([const, var])  # the cache's positions, then the new ones
    reached = decoder(inputs_embeds=inputs[:, var], attention_mask=mask[var][:, keys][None, None],
                      position_ids=var[None], past_key_values=cache,
                      use_cache=True).last_hidden_state
    hidden = torch.empty(b, p + lt, reached.shape[-1], dtype=reached.dtype, device=dev)
    hidden[:, const], hidden[:, var] = const_hidden.to(reached.dtype), reached
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
