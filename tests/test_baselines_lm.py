"""The shared LM helper on the real embedded SmolLM2-135M: segments, scoring, answer ids, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from userip.baselines.config import LoraConfig
from userip.baselines.lm import (
    IGNORE,
    SegmentLM,
    Text,
    Vectors,
    add_lora,
    answer_ids,
    load_adapter,
    save_adapter,
    splits_cleanly,
    yes_share,
)
from userip.errors import ConfigError
from userip.profile_infer.model_loading import load_frozen_lm

pytestmark = pytest.mark.slow

PROMPTS = [
    [Text("User Preference: \"Heat (1995)\"\n"), Text("Will the user like \"Fargo (1996)\"?\n"),
     Text("### Response:\n")],
    [Text("Short one.\n### Response:\n")],
    [Text("A longer prompt about \"Alien (1979)\", \"Babe (1995)\" and \"Ran (1985)\", "
          "then the target \"Jaws (1975)\".\n### Response:\n")],
]


@pytest.fixture(scope="module")
def lm() -> SegmentLM:
    loaded = load_frozen_lm("smollm2-135m", "cpu")
    return SegmentLM(loaded.model, loaded.tokenizer, loaded.device)


def token_embeds(lm: SegmentLM, text: str, special: bool) -> torch.Tensor:
    ids = lm.tokenizer(text, add_special_tokens=special).input_ids
    return lm.model.get_input_embeddings()(torch.tensor(ids))


@torch.no_grad()
def test_text_segments_embed_as_their_concatenation(lm: SegmentLM):
    for padding in ("left", "right"):
        batch = lm.embed(PROMPTS, padding=padding)
        for i, prompt in enumerate(PROMPTS):
            whole = "".join(seg.text for seg in prompt)
            want = token_embeds(lm, whole, special=True)
            real = batch.attention_mask[i].bool()
            assert int(real.sum()) == want.shape[0]
            assert torch.equal(batch.inputs_embeds[i, real], want)
            assert batch.labels[i, real].tolist() == lm.tokenizer(whole).input_ids
            assert (batch.labels[i, ~real] == IGNORE).all()
            assert batch.position_ids[i, real].tolist() == list(range(want.shape[0]))
            assert int(batch.answer_pos[i]) == int(real.nonzero().max())


@torch.no_grad()
def test_vector_rows_land_at_their_positions(lm: SegmentLM):
    vec = torch.randn(3, lm.hidden_size)
    before, after = "The user vector is ", " and the item is \"Heat (1995)\".\n"
    batch = lm.embed([[Text(before), Vectors(vec), Text(after)], [Text("x")]], padding="right")
    n0 = token_embeds(lm, before, special=True).shape[0]
    n1 = token_embeds(lm, after, special=False).shape[0]
    e, lab = batch.inputs_embeds[0], batch.labels[0]
    assert torch.equal(e[:n0], token_embeds(lm, before, special=True))
    assert torch.equal(e[n0:n0 + 3], vec)
    assert torch.equal(e[n0 + 3:n0 + 3 + n1], token_embeds(lm, after, special=False))
    assert (lab[n0:n0 + 3] == IGNORE).all() and (lab[:n0] != IGNORE).all()
    assert int(batch.answer_pos[0]) == n0 + 3 + n1 - 1


def test_bad_vectors_are_one_clear_error(lm: SegmentLM):
    with pytest.raises(ConfigError, match=r"shape \(2, 7\).*\[n, 576\]"):
        lm.embed([[Text("a"), Vectors(torch.zeros(2, 7))]])
    with pytest.raises(ConfigError, match="empty prompt"):
        lm.embed([[Text("")]])
    with pytest.raises(ConfigError, match="padding must be 'left' or 'right', got 'middle'"):
        lm.embed([[Text("a")]], padding="middle")


@torch.no_grad()
def test_answer_position_logits_equal_the_full_forward(lm: SegmentLM):
    for padding in ("left", "right"):
        batch = lm.embed(PROMPTS, padding=padding)
        got = lm.answer_logits(batch)
        full = lm.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids).logits
        want = full[torch.arange(len(PROMPTS)), batch.answer_pos]
        assert got.shape == (len(PROMPTS), len(lm.tokenizer))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_padding_does_not_change_scores(lm: SegmentLM):
    yes_no = answer_ids(lm.tokenizer, "### Response:\n", ["Yes", "No"])
    alone = torch.cat([lm.yes_prob(lm.embed([p]), yes_no) for p in PROMPTS])
    for padding in ("left", "right"):
        batched = lm.yes_prob(lm.embed(PROMPTS, padding=padding), yes_no)
        torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    # the scores are not all the same number: the prompts matter
    assert float(alone.max() - alone.min()) > 1e-3


def test_answer_ids_come_from_the_tokenizer_in_context(lm: SegmentLM):
    assert answer_ids(lm.tokenizer, "### Response:\n", ["Yes", "No"]) == [10539, 5230]
    with pytest.raises(ConfigError, match="'Yes indeed' is not one token"):
        answer_ids(lm.tokenizer, "### Response:\n", ["Yes indeed", "No"])


def test_lora_adapter_trains_saves_and_reloads(tmp_path: Path):
    torch.manual_seed(0)
    loaded = load_frozen_lm("smollm2-135m", "cpu")
    model = add_lora(loaded.model, LoraConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    lm = SegmentLM(model, loaded.tokenizer, loaded.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    loss = lm.lm_loss(lm.embed([p + [Text("Yes.")] for p in PROMPTS], padding="right"))
    loss.backward()
    opt.step()
    model.eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(float(p.detach().abs().max()) > 0 for p in lora_b)  # lora_B starts at zero

    yes_no = answer_ids(loaded.tokenizer, "### Response:\n", ["Yes", "No"])
    with torch.no_grad():
        before = lm.yes_prob(lm.embed(PROMPTS), yes_no)
    folder = save_adapter(model, tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    assert weights.is_file() and weights.stat().st_size > 0

    fresh = load_frozen_lm("smollm2-135m", "cpu")
    with torch.no_grad():
        plain = SegmentLM(fresh.model, fresh.tokenizer, fresh.device)
        base = plain.yes_prob(plain.embed(PROMPTS), yes_no)
        reloaded = SegmentLM(load_adapter(fresh.model, folder), fresh.tokenizer, fresh.device)
        after = reloaded.yes_prob(reloaded.embed(PROMPTS), yes_no)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, before, atol=1e-6)  # the adapter changed the scores
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        load_adapter(fresh.model, tmp_path)


@torch.no_grad()
def test_a_cached_prefix_gives_the_whole_prompts_scores(lm: SegmentLM):
    head = "Below is an instruction.\n\n### Input:\n"
    rests = ['User Preference: "Heat (1995)"\n\n### Response:\n',
             'User Preference: "Alien (1979)", "Babe (1995)", "Ran (1985)"\n\n### Response:\n']
    assert all(splits_cleanly(lm.tokenizer, head, r) for r in rests)
    assert not splits_cleanly(lm.tokenizer, "Below is an instruc", "tion.")
    yes_no = answer_ids(lm.tokenizer, head + rests[0], ["Yes", "No"])
    whole = lm.yes_prob(lm.embed([[Text(head + r)] for r in rests]), yes_no)
    prefix = lm.prefix([Text(head)])
    for padding in ("left", "right"):
        cached = lm.yes_prob(lm.embed([[Text(r)] for r in rests], padding=padding,
                                      continuation=True), yes_no, prefix)
        torch.testing.assert_close(cached, whole, rtol=1e-4, atol=1e-5)


def test_score_after_reuses_a_clean_head_and_runs_the_others_whole(lm: SegmentLM):
    """The one scoring loop TALLRec and CoLLM share: same scores with the head cached (run
    once, then only the tails) and without (a head that does not split cleanly)."""
    head = "Below is an instruction.\n\n### Input:\n"
    rests = ['User Preference: "Heat (1995)"\n\n### Response:\n',
             'User Preference: "Alien (1979)", "Babe (1995)", "Ran (1985)"\n\n### Response:\n']
    yes_no = answer_ids(lm.tokenizer, head + rests[0], ["Yes", "No"])
    with torch.no_grad():
        whole = lm.yes_prob(lm.embed([[Text(head + r)] for r in rests]), yes_no).numpy()
    cached = lm.score_after(head, [[Text(r)] for r in rests], 1, lambda x: yes_share(x, yes_no))
    torch.testing.assert_close(torch.tensor(cached.scores), torch.tensor(whole), rtol=1e-4, atol=1e-5)
    lengths = [len(lm.tokenizer(head + r).input_ids) for r in rests]
    head_len = len(lm.tokenizer(head).input_ids)
    assert cached.tokens == head_len + sum(n - head_len for n in lengths)
    cut = "Below is an instruc"  # merges with the tails' first token: no reuse
    tails = [[Text(head[len(cut):] + r)] for r in rests]
    plain = lm.score_after(cut, tails, 2, lambda x: yes_share(x, yes_no))
    torch.testing.assert_close(torch.tensor(plain.scores), torch.tensor(whole), rtol=1e-4, atol=1e-5)
    assert plain.tokens == sum(lengths)
