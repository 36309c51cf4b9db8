"""KAR's knowledge texts: the prompts, their greedy generation cached as data, and the
encoder that turns each text into one vector.

- ``user_prompt``: KAR's preference-reasoning prompt, from the user's most recent train
  ratings (title and stars) and observed attributes; ``item_prompt``: its factual prompt,
  from the item's title and categories. Both are worded after the paper's (Xi et al.,
  RecSys 2024, Sec. 3.2): analyse the factors behind the user's taste; introduce the item
  and who likes it. Instruction-tuned LMs get them through their chat template.
- ``generate_texts``: greedy, batched, at most ``max_new_tokens`` a text; the rows are
  written as Parquet chunks of ``chunk_rows`` (id, prompt, text, token counts, seconds)
  into a folder named after the settings' fingerprint (LM, token budget, every prompt),
  each chunk renamed into place only when whole. A run killed mid-way resumes at the first
  missing chunk; a run with the same fingerprint reuses every chunk.
- ``encode_cached``: the mean of the LM's last hidden states over each text's tokens
  (padding excluded, ``encode``), cached as safetensors under the fingerprint of the texts
  and the LM.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from userip.baselines.runs import batches
from userip.fingerprint import hash_json
from userip.profile_infer.model_loading import LoadedLM

log = logging.getLogger(__name__)

USER_TASK = ("Analyze this user's movie preferences: the genres, directors and actors, eras and "
             "countries, themes, moods and production qualities they like or dislike. Explain "
             "briefly, citing movies from the list.")
ITEM_TASK = ("describe its genre, director and actors, era and country, plot and themes, mood and "
             "tone, and what kind of viewers like it.")


def user_prompt(history: Sequence[tuple[str, float | None]], attributes: Mapping[str, str]) -> str:
    """The reasoning prompt from (title, rating) of the user's ratings, oldest first (a
    rating of None, from an implicit-feedback source, lists the title alone)."""
    who = f" ({', '.join(f'{k}: {v}' for k, v in attributes.items())})" if attributes else ""
    rated = "\n".join(t if r is None else f"{t}: {r:g} of 5 stars" for t, r in history)
    return f"A user{who} has rated these movies, the most recent last:\n{rated}\n{USER_TASK}"


def item_prompt(title: str, categories: str | None) -> str:
    """The factual prompt of one item (``categories`` as dataprep writes them, "A | B")."""
    kinds = f" ({', '.join(c.strip() for c in categories.split('|'))})" if categories else ""
    return f"Introduce the movie {title}{kinds}: {ITEM_TASK}"


def chat(tokenizer, prompt: str) -> str:
    """The prompt as the LM reads it: in its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


# One cached text: its prompt, the generated text, the tokens of each, and its share of
# its generation batch's seconds.
TEXT_SCHEMA = {"id": pl.String, "prompt": pl.String, "text": pl.String, "prompt_tokens": pl.Int64,
               "new_tokens": pl.Int64, "seconds": pl.Float64}


@dataclass(frozen=True)
class Texts:
    """The rows present in a text cache folder, in request order."""

    frame: pl.DataFrame   # TEXT_SCHEMA
    complete: bool        # every requested id has its row
    generated_rows: int   # rows this call generated (0: all read back)


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:05d}.parquet"


def text_folder(root: Path, kind: str, model: str, max_new_tokens: int, chunk_rows: int,
                ids: Sequence[str], prompts: Sequence[str]) -> Path:
    """Where the texts of these settings live: ``<root>/<kind>-<fingerprint>``."""
    key = hash_json({"model": model, "max_new_tokens": max_new_tokens, "chunk_rows": chunk_rows,
                     "decoding": "greedy", "rows": [list(ids), list(prompts)]})
    return Path(root) / f"{kind}-{key}"


@torch.no_grad()
def generate(lm: LoadedLM, prompts: Sequence[str], max_new_tokens: int) -> tuple[list[str], list[int], list[int]]:
    """Greedy continuations of ``prompts`` (one left-padded batch): (texts, prompt tokens,
    new tokens up to and including the end-of-sequence token)."""
    tok = lm.tokenizer
    templated = [chat(tok, p) for p in prompts]
    enc = tok(templated, return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=not getattr(tok, "chat_template", None)).to(lm.device)
    out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[:, enc.input_ids.shape[1]:].cpu()
    is_eos = new == tok.eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1])
    texts = [tok.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(new, first_eos.tolist())]
    return texts, enc.attention_mask.sum(1).tolist(), first_eos.tolist()


def generate_texts(lm: LoadedLM, folder: Path, ids: Sequence[str], prompts: Sequence[str],
                   max_new_tokens: int, chunk_rows: int, batch_size: int,
                   limit: int | None = None) -> Texts:
    """The texts of ``ids`` from their ``prompts``, generated chunk by chunk into ``folder``
    (``text_folder``); chunks already there are read back, not generated again. ``limit``:
    generate at most that many missing chunks in this call (a time-boxed run; the next
    call resumes after them)."""
    folder.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(ids), chunk_rows)
    chunks, made, frames = 0, 0, []
    for k, start in enumerate(starts):
        path = _chunk_path(folder, k)
        if not path.is_file():
            if limit is not None and chunks >= limit:
                break
            rows = slice(start, start + chunk_rows)
            frame = _generate_chunk(lm, ids[rows], prompts[rows], max_new_tokens, batch_size)
            tmp = path.with_suffix(".tmp")
            frame.write_parquet(tmp)
            os.replace(tmp, path)
            chunks, made = chunks + 1, made + frame.height
            log.info("kar: %s chunk %d of %d generated (%d rows, %.0f s)", folder.name, k + 1,
                     len(starts), frame.height, frame["seconds"].sum())
        frames.append(pl.read_parquet(path))
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=TEXT_SCHEMA)
    return Texts(frame, frame.height == len(ids), made)


def _generate_chunk(lm: LoadedLM, ids: Sequence[str], prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int) -> pl.DataFrame:
    rows: dict[str, list] = {c: [] for c in TEXT_SCHEMA}
    for batch in batches(list(zip(ids, prompts)), batch_size):
        t0 = time.perf_counter()
        texts, prompt_tokens, new_tokens = generate(lm, [p for _, p in batch], max_new_tokens)
        seconds = (time.perf_counter() - t0) / len(batch)
        for (i, p), text, n_in, n_out in zip(batch, texts, prompt_tokens, new_tokens):
            for col, value in zip(TEXT_SCHEMA, (i, p, text, n_in, n_out, seconds)):
                rows[col].append(value)
    return pl.DataFrame(rows, schema=TEXT_SCHEMA)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] hidden states averaged over the positions where ``mask`` [B, T] is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def encode(lm: LoadedLM, texts: Sequence[str], batch_size: int) -> tuple[torch.Tensor, int]:
    """One vector per text (``mean_pool`` of the last hidden states of the LM's decoder,
    right-padded batches) and the tokens run; every text must have at least one token."""
    base = lm.model.base_model  # the decoder under the LM head (e.g. LlamaModel)
    out, tokens = [], 0
    for chunk in batches(list(texts), batch_size):
        enc = lm.tokenizer(list(chunk), return_tensors="pt", padding=True, padding_side="right").to(lm.device)
        if int(enc.attention_mask.sum(1).min()) == 0:
            raise ValueError("encode: a text with no tokens")
        hidden = base(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        out.append(mean_pool(hidden.float(), enc.attention_mask).cpu())
        tokens += int(enc.attention_mask.sum())
    return torch.cat(out) if out else torch.zeros(0, lm.model.config.hidden_size), tokens


@dataclass(frozen=True)
class TextVectors:
    ids: list[str]          # the rows that have a (non-empty) text
    vectors: torch.Tensor   # [len(ids), hidden]
    tokens: int             # tokens the encoder ran and the seconds it took (kept in the cache)
    seconds: float


def encode_cached(lm: LoadedLM, texts: Texts, folder: Path, batch_size: int) -> TextVectors:
    """``encode`` of every non-empty text, cached as a safetensors file beside the text folder
    (keyed by the texts and the encoder LM; the ids, tokens and seconds in its metadata)."""
    kept = texts.frame.filter(pl.col("text").str.len_chars() > 0)
    key = hash_json({"ids": kept["id"].to_list(), "texts": kept["text"].to_list(),
                     "encoder": str(lm.path), "pooling": "mean-last-hidden"})
    path = folder.with_name(f"{folder.name}.vectors-{key}.safetensors")
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            return TextVectors(json.loads(meta["ids"]), f.get_tensor("vectors"), int(meta["tokens"]),
                               float(meta["seconds"]))
    ids = kept["id"].to_list()
    t0 = time.perf_counter()
    vectors, tokens = encode(lm, kept["text"].to_list(), batch_size)
    seconds = round(time.perf_counter() - t0, 2)
    tmp = path.with_suffix(".tmp")
    save_file({"vectors": vectors.contiguous()}, tmp,
              metadata={"ids": json.dumps(ids), "tokens": str(tokens), "seconds": str(seconds)})
    os.replace(tmp, path)
    return TextVectors(ids, vectors, tokens, seconds)
