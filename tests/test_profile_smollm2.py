"""The real embedded SmolLM2 on real MovieLens-100K users: frozen weights, loss falls."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from userip.config import ProfileConfig
from userip.profile_infer.data import load_profile_data
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout
from userip.profile_infer.train import Trainer


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_smollm2_stays_frozen_and_profiles_fit(ml100k_small_dir: Path, tmp_path: Path):
    cfg = ProfileConfig(max_target_tokens=16, batch_size=8, warmup_epochs=1, max_epochs=1,
                        lr=1e-2, checkpoint_every=1000, valid_max_users=16)
    lm = load_frozen_lm(cfg.model)
    assert lm.path.name == "smollm2-135m" and type(lm.model).__name__ == "LlamaForCausalLM"
    assert all(not p.requires_grad for p in lm.model.parameters())
    before = weights_digest(lm.model)
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    data = load_profile_data(ml100k_small_dir, lm.tokenizer, cfg.max_target_tokens,
                             valid_max_users=cfg.valid_max_users)
    trainer = Trainer(cfg, lm.model, layout, data, lm.device, lm.tokenizer.pad_token_id,
                      "test", tmp_path / "ckpt")
    theta0 = trainer.theta.clone()
    progress = trainer.fit()
    assert weights_digest(lm.model) == before
    assert all(p.grad is None for p in lm.model.parameters())
    assert not torch.equal(trainer.theta, theta0)
    assert progress.curves[0]["phase"] == "init"
    llm = [row["train_llm"] for row in progress.curves[1:]]
    valid = [row["valid_llm"] for row in progress.curves]
    assert llm[-1] < llm[0], llm
    assert min(valid[1:]) < valid[0], valid
