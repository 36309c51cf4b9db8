"""Config of the LLM baselines: one pydantic section per method, under ``BaselinesConfig``.

Sections follow ``userip.config.Section`` (unknown keys are errors; ``learned()`` is what
a cache key holds), so ``BaselinesConfig`` can hang under the main config as
``baselines:``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from userip.config import Section, Seed


class LoraConfig(Section):
    """peft LoRA settings; the defaults are TALLRec's and CoLLM's (rank 8 on q/v)."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(("q_proj", "v_proj"), min_length=1)


class TallrecConfig(Section):
    """TALLRec on its own MovieLens-100K protocol. The defaults are the CPU preset
    (K = 64, two epochs, seeded subsamples of 64 valid and 200 test samples); the GPU preset
    sets ``valid_samples`` and ``test_samples`` to null (the authors' full 1,000 + 1,000) and
    runs K = 16 / 64 / 256."""

    model: str = "smollm2-135m"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shots: int = Field(64, ge=1, description="K: training samples drawn (seeded) from the train part")
    seed: Seed = 0
    epochs: int = Field(2, ge=1, description="epochs over the K samples; the epoch is chosen on validation AUC")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0, description="AdamW; high because K-shot tuning takes few steps")
    weight_decay: float = Field(0.0, ge=0)
    valid_samples: int | None = Field(64, ge=1, description="seeded subsample of valid (null: all)")
    test_samples: int | None = Field(200, ge=1, description="seeded subsample of test (null: all)")
    eval_batch_size: int = Field(16, ge=1)
    lora: LoraConfig = LoraConfig()


class MfConfig(Section):
    """CoLLM's collaborative model: MF (dot product of user and item embeddings) with BCE
    and Adam. CoLLM tunes lr in {1e-2, 1e-3, 1e-4}, the size in {64, 128, 256} and the
    weight decay in 1e-2..1e-7; every grid point is chosen on validation AUC only."""

    dims: tuple[int, ...] = Field((64, 128, 256), min_length=1)
    lrs: tuple[float, ...] = Field((1e-2, 1e-3, 1e-4), min_length=1)
    weight_decays: tuple[float, ...] = Field((1e-3, 1e-5, 1e-7), min_length=1)
    epochs: int = Field(200, ge=1, description="cap; early stop on valid AUC")
    patience: int = Field(10, ge=1)
    batch_size: int = Field(1024, ge=1)
    seed: Seed = 0
    warm_min_count: int = Field(
        3, ge=1, description="warm test rows: user and item each seen this often in train (CoLLM Fig. 3)")


class CollmConfig(Section):
    mf: MfConfig = MfConfig()


class BaselinesConfig(Section):
    tallrec: TallrecConfig = TallrecConfig()
    collm: CollmConfig = CollmConfig()
