"""Config of the LLM baselines: one pydantic section per method, under ``BaselinesConfig``.

Sections follow ``userip.section.Section`` (unknown keys are errors; ``learned()`` is what
a cache key holds); ``BaselinesConfig`` hangs under the main config as its optional
``baselines:`` section. This module is schema only, on the ground floor like
``userip.hyper``: ``userip.config`` embeds it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from userip.hyper import FitSettings
from userip.section import Section, Seed


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
    """CoLLM-MF on its ML-1M temporal split. The defaults are the CPU preset: seeded
    subsamples of 64 train, 64 valid and 200 test rows (TALLRec's preset's sizes; prompts are
    ~180 tokens), one LoRA epoch and two mapper
    epochs, and one MF grid point (dim 64, lr 1e-2, weight decay 1e-5: the best on valid AUC of
    the dim-64 part of the grid, lr {1e-2, 1e-3} x weight decay {1e-3, 1e-5, 1e-7}); the GPU preset
    (``configs/baselines-gpu.yaml``) sets the three subsamples to null (all 33,891 / 10,401 /
    7,331 rows), more epochs and CoLLM's whole MF grid."""

    model: str = "smollm2-135m"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: Seed = 0
    train_samples: int | None = Field(64, ge=1, description="seeded subsample of train (null: all)")
    valid_samples: int | None = Field(64, ge=1, description="seeded subsample of valid (null: all)")
    test_samples: int | None = Field(200, ge=1, description="seeded subsample of test (null: all)")
    history: int = Field(10, ge=0, description="most recent liked titles in the prompt")
    lora_epochs: int = Field(1, ge=1, description="stage 1 (LoRA, text prompts); chosen on valid AUC")
    mapper_epochs: int = Field(2, ge=1, description="stage 2 (mapping MLP, LoRA frozen); chosen on valid AUC")
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    lora_lr: float = Field(1e-3, gt=0, description="AdamW (CoLLM tunes lr in {1e-2, 1e-3, 1e-4})")
    mapper_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0, description="CoLLM's value for every LLM method")
    mapper_scale: int = Field(10, ge=1, description="the mapping MLP's hidden size over the MF size")
    lora: LoraConfig = LoraConfig()
    mf: MfConfig = MfConfig(dims=(64,), lrs=(1e-2,), weight_decays=(1e-5,))


class KarExpertsConfig(Section):
    """KAR's hybrid-expert adapter: ``shared`` experts seen by both text fields plus
    ``specific`` experts per field (user preference, item knowledge), each an MLP over the
    text vector (``hidden`` layers, then the DCN's embedding size), mixed by a softmax gate
    computed from the same vector."""

    shared: int = Field(2, ge=0)
    specific: int = Field(2, ge=1)
    hidden: tuple[int, ...] = Field((64,), description="hidden layers of every expert MLP")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class KarConfig(Section):
    """KAR (Xi et al., RecSys 2024) + DCN. KAR has no protocol of its own here: it runs on the
    project's prepared split and its new-users protocol only (``userip baselines --data``, or
    the flow stage: the users held out are the downstream run's, as for the other methods on
    our split), and scores every test row. The defaults are the CPU preset, sized on
    MovieLens-100K with the demo's ``prepare`` settings: texts for a seeded subset of 256 of
    the 943 users and 128 of the 1,349 items (users and items without one get a zero vector
    and a "has text" flag of 0), user prompts from the 8 most recent train ratings (~250
    tokens with SmolLM2's chat template; an item prompt is ~80), at most 32 new tokens a text
    (greedy), 16 prompts a generation batch; DCN with and without the KAR fields on 3 seeds.
    Run it with one torch thread (``OMP_NUM_THREADS=1``): on the shared 2-core box at load
    ~5, 64 users' texts took 113 s with one thread and 282 s with two, and encoding them
    minutes. ``configs/baselines-gpu.yaml`` sets ``users`` and ``items`` to null (every user
    and item), 256 new tokens and 30 history items."""

    model: str = "smollm2-135m"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: Seed = 0
    users: int | None = Field(256, ge=1, description="seeded subset of users that get a text (null: all)")
    items: int | None = Field(128, ge=1, description="seeded subset of items that get a text (null: all)")
    history: int = Field(8, ge=1, description="most recent train ratings in a user's prompt")
    max_new_tokens: int = Field(32, ge=1)
    gen_batch_size: int = Field(16, ge=1)
    chunk_rows: int = Field(32, ge=1, description="texts per cached Parquet chunk (the resume unit)")
    encode_batch_size: int = Field(32, ge=1)
    experts: KarExpertsConfig = KarExpertsConfig()
    ctr: FitSettings = FitSettings()
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1, description="DCN seeds, with and without KAR")
    threads: int = Field(1, ge=1, description="torch threads of the CTR fits")


class SameDataConfig(Section):
    """Every baseline on the project's own prepared split (``prepare``'s output) and its
    new-users protocol (``downstream.new_user_share``): each method trains on the other users'
    train rows with its own section's sizes and epochs and picks its epochs on their valid
    rows; all methods score the same seeded test rows. The defaults are the CPU preset; null
    scores every test row (the GPU preset)."""

    seed: Seed = 0
    test_samples: int | None = Field(200, ge=1, description="seeded subsample of every user's test rows (null: all)")
    new_user_samples: int | None = Field(
        100, ge=1, description="seeded subsample of the held-out users' test rows, scored for the new-user AUC (null: all)")
    history: int = Field(10, ge=1, description="the user's most recent train interactions in a prompt")


class BaselinesConfig(Section):
    tallrec: TallrecConfig = TallrecConfig()
    collm: CollmConfig = CollmConfig()
    kar: KarConfig = KarConfig()
    same_data: SameDataConfig = SameDataConfig()
