"""Isolation mask (Fig. 4) as a property, on a tiny random Llama, eager and SDPA."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from userip.config import ProfileConfig
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout, isolation_mask, pad_targets, target_nll


def test_mask_blocks_across_profiles_and_opens_for_task(tiny):
    lm = load_frozen_lm(str(tiny))
    cfg = ProfileConfig()
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    mask = isolation_mask(layout, 3, torch.float32, torch.device("cpu"))[0, 0]
    seg = layout.segment.tolist() + [2, 2, 2]
    slot1, slot2 = layout.theta_slots.tolist()
    assert seg[slot1] == 0 and seg[slot2] == 1
    assert mask[slot2, slot1] < 0            # θ^2 cannot see θ^1
    assert mask[slot2, slot2 - 1] == 0       # θ^2 sees x^2
    first_x2 = seg.index(1)
    assert mask[first_x2, first_x2 - 1] < 0  # x^2 cannot see θ^1 (the previous token)
    task_pos = seg.index(2)
    assert (mask[task_pos, : task_pos + 1] == 0).all()  # D_task sees everything before it
    assert (mask[-1] == 0).all()                         # last target token sees all
    assert mask[0, 1] < 0                                # still causal


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_changing_theta1_leaves_profile2_and_moves_target_loss(tiny, attn):
    lm = load_frozen_lm(str(tiny))
    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation=attn).eval()
    cfg = ProfileConfig()
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    ids, real = pad_targets([[100, 200, 300, 400], [500, 600]], lm.tokenizer.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 2, model.config.hidden_size, generator=gen)
    moved = theta.clone()
    moved[:, 0] += 10 * torch.randn(2, model.config.hidden_size, generator=gen)
    with torch.no_grad():
        nll_a, n_a, h_a = target_nll(model, layout, theta, ids, real, return_hidden=True)
        nll_b, n_b, h_b = target_nll(model, layout, moved, ids, real, return_hidden=True)
    seg2 = (layout.segment == 1).nonzero().flatten()
    torch.testing.assert_close(h_a[:, seg2], h_b[:, seg2], rtol=0, atol=1e-6)
    seg1 = (layout.segment == 0).nonzero().flatten()
    assert not torch.allclose(h_a[:, seg1[-1]], h_b[:, seg1[-1]])
    assert (nll_a - nll_b).abs().min() > 1e-4
    assert n_a.tolist() == [4, 2]


def test_padding_does_not_change_a_users_loss(tiny):
    lm = load_frozen_lm(str(tiny))
    cfg = ProfileConfig()
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    theta = torch.randn(2, 2, lm.model.config.hidden_size)
    pad = lm.tokenizer.pad_token_id
    with torch.no_grad():
        alone = target_nll(lm.model, layout, theta[:1], *pad_targets([[7, 8]], pad))[0]
        batch = target_nll(lm.model, layout, theta, *pad_targets([[7, 8], [1, 2, 3, 4, 5]], pad))[0]
    torch.testing.assert_close(alone[0], batch[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cached_context_phrases_give_the_full_forwards_loss_and_gradient(tiny, attn):
    """token_nll runs the context phrases once as a cache; the NLL and ∂NLL/∂θ must be
    those of one forward over the whole prompt under the isolation mask."""
    lm = load_frozen_lm(str(tiny))
    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation=attn).eval()
    layout = build_layout(lm.tokenizer, ProfileConfig().profiles, ". Items:")
    seg = layout.segment.tolist()
    slots = layout.theta_slots.tolist()
    assert layout.constant.tolist() == [i for i in range(layout.prefix_len)
                                        if seg[i] < layout.n_profiles and i < slots[seg[i]]]
    ids, real = pad_targets([[100, 200, 300, 400], [500, 600]], lm.tokenizer.pad_token_id)
    theta = torch.randn(2, 2, model.config.hidden_size,
                        generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    nll, counts = target_nll(model, layout, theta, ids, real)
    (grad,) = torch.autograd.grad(nll.sum(), theta)

    emb = model.get_input_embeddings()
    prefix = emb(layout.prefix_ids).expand(2, -1, -1).clone()
    prefix[:, layout.theta_slots] = theta
    p, lt = layout.prefix_len, ids.shape[1]
    hidden = model.model(inputs_embeds=torch.cat([prefix, emb(ids)], 1),
                         attention_mask=isolation_mask(layout, lt, torch.float32, theta.device),
                         position_ids=torch.arange(p + lt)[None]).last_hidden_state
    logits = model.lm_head(hidden[:, p - 1: p + lt - 1])
    full = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    full = (full * real).sum(1)
    (full_grad,) = torch.autograd.grad(full.sum(), theta)
    torch.testing.assert_close(nll, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-6)
    assert counts.tolist() == [4, 2]


def test_positions_run_counts_what_the_decoder_is_fed(tiny):
    """meta.json's lm_tokens adds ``positions_run`` per forward: it must equal the input
    positions the real decoder receives (the cached context phrases once, the rest per row)."""
    lm = load_frozen_lm(str(tiny))
    layout = build_layout(lm.tokenizer, ProfileConfig().profiles, ". Items:")
    fed = []
    hook = lm.model.model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["inputs_embeds"].shape[:2].numel()), with_kwargs=True)
    ids, real = pad_targets([[100, 200, 300], [400], [500, 600]], lm.tokenizer.pad_token_id)
    theta = torch.zeros(3, 2, lm.model.config.hidden_size)
    with torch.no_grad():
        target_nll(lm.model, layout, theta, ids, real)
    hook.remove()
    assert len(fed) == 2 and sum(fed) == layout.positions_run(3, 3)
    assert fed[0] == len(layout.constant) > 0
