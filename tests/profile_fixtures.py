"""Small files for the profile/quantize tests: a tiny random Llama and a data dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from userip.dataprep.behaviour import behaviour_text
from userip.profile_infer.model_loading import materialize_embedded


def write_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with the real SmolLM2 tokenizer (for plumbing only)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (path / "config.json").is_file():
        return path
    tok = AutoTokenizer.from_pretrained(materialize_embedded("smollm2-135m"))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Casablanca (1942)",
          "Alien (1979)", "Babe (1995)", "Clerks (1994)", "Ran (1985)", "Vertigo (1958)",
          "Jaws (1975)", "Psycho (1960)", "Brazil (1985)"]


def write_data_dir(path: Path, n_users: int = 12, seed: int = 0,
                   empty_text_users: int = 0, ratings: bool = True) -> Path:
    """Interactions/behaviour parquet files in the dataprep contract, from a seeded RNG;
    without ``ratings``, an implicit-feedback source's (null ratings, no feedback marks)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for u in range(n_users):
        items = rng.choice(len(TITLES), size=8, replace=False)
        for j, it in enumerate(items):
            split = "train" if j < 6 else ("valid" if j == 6 else "test")
            rating = float(rng.integers(1, 6))
            rows.append({"user_id": f"u{u:03d}", "item_id": f"i{it}", "user_idx": u,
                         "item_idx": int(it), "rating": rating if ratings else None,
                         "ts": 1000 * j, "label": int(rating >= 4 or not ratings),
                         "split": split, "review": None})
    inter = pl.DataFrame(rows).with_columns(
        pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32),
        pl.col("rating").cast(pl.Float32), pl.col("ts").cast(pl.Int64),
        pl.col("label").cast(pl.Int8), pl.col("review").cast(pl.String))
    inter.write_parquet(path / "interactions.parquet")

    items = pl.DataFrame({"item_idx": list(range(len(TITLES))), "title": TITLES,
                          "categories": [None] * len(TITLES), "brand": [None] * len(TITLES)},
                         schema={"item_idx": pl.Int32, "title": pl.String,
                                 "categories": pl.String, "brand": pl.String})
    args = dict(label_threshold=4.0, feedback=ratings, review_words=8)  # the dataprep writer
    beh = behaviour_text(inter, items, "train", **args)
    if empty_text_users:
        beh = beh.with_columns(pl.when(pl.col("user_idx") < empty_text_users)
                               .then(pl.lit([], dtype=pl.List(pl.String)))
                               .otherwise(pl.col("items")).alias("items"))
    beh.write_parquet(path / "behaviour.parquet")
    behaviour_text(inter, items, "valid", **args).write_parquet(path / "behaviour_valid.parquet")
    return path
