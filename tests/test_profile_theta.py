"""Per-user θ table: only a batch's rows move; seeded init from embedding statistics."""

from __future__ import annotations

import torch

from userip.profile_infer.theta import RowAdamW, embedding_init


def test_absent_rows_are_bit_identical_and_present_rows_follow_adamw():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(10, 2, 6, generator=gen)
    before = table.clone()
    opt = RowAdamW(table, lr=1e-2, weight_decay=0.1)
    rows = torch.tensor([1, 4, 7])
    ref = torch.nn.Parameter(before[rows].clone())
    ref_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    for _ in range(4):
        grad = torch.randn(3, 2, 6, generator=gen)
        opt.step(rows, grad)
        ref.grad = grad.clone()
        ref_opt.step()
    absent = torch.ones(10, dtype=torch.bool)
    absent[rows] = False
    assert torch.equal(table[absent], before[absent])
    assert torch.equal(opt.exp_avg[absent], torch.zeros_like(opt.exp_avg[absent]))
    assert opt.steps.tolist() == [0, 4, 0, 0, 4, 0, 0, 4, 0, 0]
    torch.testing.assert_close(table[rows], ref.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(table[rows], before[rows])


def test_rows_with_different_step_counts_get_their_own_bias_correction():
    table = torch.zeros(2, 1, 3)
    opt = RowAdamW(table, lr=0.1)
    opt.step(torch.tensor([0]), torch.ones(1, 1, 3))
    opt.step(torch.tensor([0, 1]), torch.ones(2, 1, 3))
    # Adam's first step moves by lr*sign(grad) whatever the history of other rows
    torch.testing.assert_close(table[1], torch.full((1, 3), -0.1))
    torch.testing.assert_close(table[0], torch.full((1, 3), -0.2))


def test_init_is_seeded_shard_independent_and_matches_embedding_stats():
    emb = torch.randn(5000, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([0, 1, 2, 3.0])
    full = embedding_init(9000, 2, emb, seed=3)
    assert torch.equal(full, embedding_init(9000, 2, emb, seed=3))
    assert not torch.equal(full, embedding_init(9000, 2, emb, seed=4))
    shard = torch.arange(1, 9000, 2)
    assert torch.equal(embedding_init(9000, 2, emb, seed=3, rows=shard), full[shard])
    flat = full.reshape(-1, 4)
    torch.testing.assert_close(flat.mean(0), emb.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(flat.std(0), emb.std(0), atol=0.1, rtol=0.05)
