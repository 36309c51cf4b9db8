"""The one LM helper every baseline shares.

A prompt is a list of segments: ``Text`` (tokenized) and ``Vectors`` (rows written straight
into the input embeddings, e.g. CoLLM's mapped MF vectors). ``SegmentLM.embed`` turns a batch
of prompts into ``inputs_embeds`` + attention mask + position ids, with left or right
padding; no placeholder token ids are ever put into the sequence. Scoring runs one forward
pass and asks the LM head only for the answer position (the last real token of each row);
a prefix shared by many prompts can run once (``SegmentLM.prefix``) and be reused from the
LM's key/value cache.
Answer ids ("Yes" / "No") are resolved from the tokenizer in the context they follow and
must be exactly one token each. LoRA is ``peft``'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from userip.baselines.config import LoraConfig
from userip.baselines.runs import batches
from userip.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers.cache_utils import Cache

IGNORE = -100  # label of positions that carry no LM target (padding, vector rows)


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # [n] one score per prompt
    tokens: int         # LM tokens run forward (the shared head once, when it was reused)


@dataclass(frozen=True)
class Prefix:
    cache: Cache  # the LM's key/value cache of the prefix, batch 1
    length: int


def splits_cleanly(tokenizer, prefix: str, rest: str) -> bool:
    """Whether ``prefix + rest`` tokenizes as the prefix's tokens then the rest's, so that a
    cached prefix gives the same scores as the whole prompt."""
    whole = tokenizer(prefix + rest).input_ids
    return whole == (tokenizer(prefix).input_ids
                     + tokenizer(rest, add_special_tokens=False).input_ids)


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Vectors:
    values: torch.Tensor  # [n, hidden]


Segment = Text | Vectors
Padding = Literal["left", "right"]


@dataclass
class SegmentBatch:
    inputs_embeds: torch.Tensor   # [B, T, hidden]
    attention_mask: torch.Tensor  # [B, T] 1 = real position
    position_ids: torch.Tensor    # [B, T] 0.. over real positions
    labels: torch.Tensor          # [B, T] token id of text positions, IGNORE elsewhere
    answer_pos: torch.Tensor      # [B] index of each row's last real position


def answer_ids(tokenizer, context: str, answers: Sequence[str]) -> list[int]:
    """Token id of each answer as the tokenizer writes it right after ``context``.

    Tokenizes ``context + answer`` and takes the continuation; an answer that is not exactly
    one token there (or that merges with the end of the context) is a ConfigError.
    """
    base = tokenizer(context, add_special_tokens=False).input_ids
    ids = []
    for answer in answers:
        full = tokenizer(context + answer, add_special_tokens=False).input_ids
        tail = full[len(base):]
        if full[:len(base)] != base or len(tail) != 1:
            raise ConfigError(
                f"answer {answer!r} is not one token after the prompt's end {context[-20:]!r} "
                f"with this tokenizer (continuation tokens: {tokenizer.convert_ids_to_tokens(tail)})")
        ids.append(tail[0])
    if len(set(ids)) != len(ids):
        raise ConfigError(f"answers {list(answers)} map to the same token ids {ids}")
    return ids


def yes_share(logits: torch.Tensor, yes_no: Sequence[int]) -> torch.Tensor:
    """P("Yes") of the two-way softmax over the Yes and No columns of logits [B, V]."""
    return torch.softmax(logits[:, list(yes_no)].float(), dim=-1)[:, 0]


class SegmentLM:
    """A causal LM (optionally LoRA-wrapped) fed with text and vector segments."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device) -> None:
        if tokenizer.pad_token_id is None:
            raise ConfigError("tokenizer has no pad token (load it with load_frozen_lm)")
        self.model, self.tokenizer, self.device = model, tokenizer, device

    def _embeddings(self) -> torch.nn.Embedding:
        """The LM's input token embeddings (Hugging Face's ``get_input_embeddings``)."""
        # torch types an nn.Module's unknown attributes as Tensor | Module: the HF / peft
        # method is not visible through the nn.Module annotation
        return self.model.get_input_embeddings()  # type: ignore[operator]

    @property
    def hidden_size(self) -> int:
        return self._embeddings().embedding_dim

    def _pieces(self, prompt: Sequence[Segment],
                continuation: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(embeddings [n, d], labels [n]) per run: adjacent Text segments are tokenized as one
        string, so a text-only prompt reads exactly as its concatenation would. The first run
        gets the tokenizer's special tokens (BOS) unless the prompt continues a prefix."""
        emb = self._embeddings()
        runs: list[str | torch.Tensor] = []
        for seg in prompt:
            if isinstance(seg, Text):
                if runs and isinstance(runs[-1], str):
                    runs[-1] += seg.text
                else:
                    runs.append(seg.text)
            elif isinstance(seg, Vectors):
                v = seg.values
                if v.dim() != 2 or v.shape[1] != self.hidden_size:
                    raise ConfigError(f"Vectors segment has shape {tuple(v.shape)}; "
                                      f"expected [n, {self.hidden_size}] (the LM's hidden size)")
                runs.append(v)
            else:
                raise ConfigError(f"prompt segment of type {type(seg).__name__}; "
                                  f"expected Text or Vectors")
        out = []
        for k, run in enumerate(runs):
            if isinstance(run, str):
                ids = self.tokenizer(run, add_special_tokens=k == 0 and not continuation).input_ids
                t = torch.tensor(ids, dtype=torch.long, device=self.device)
                out.append((emb(t), t))
            else:
                out.append((run.to(self.device, emb.weight.dtype),
                            torch.full((run.shape[0],), IGNORE, dtype=torch.long, device=self.device)))
        if not out or sum(e.shape[0] for e, _ in out) == 0:
            raise ConfigError("empty prompt: no tokens and no vectors")
        return out

    def embed(self, prompts: Sequence[Sequence[Segment]], padding: Padding = "left",
              continuation: bool = False) -> SegmentBatch:
        """Prompts as one padded batch; ``continuation``: they follow a ``Prefix``."""
        if padding not in ("left", "right"):
            raise ConfigError(f"padding must be 'left' or 'right', got {padding!r}")
        rows = []
        for prompt in prompts:
            pieces = self._pieces(prompt, continuation)
            rows.append((torch.cat([e for e, _ in pieces]), torch.cat([t for _, t in pieces])))
        if not rows:
            raise ConfigError("empty batch: no prompts")
        length = max(e.shape[0] for e, _ in rows)
        d = rows[0][0].shape[1]
        pad_emb = self._embeddings()(
            torch.tensor([self.tokenizer.pad_token_id], device=self.device))[0]
        embeds = pad_emb.expand(len(rows), length, d).clone()
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=self.device)
        for i, (e, t) in enumerate(rows):
            span = slice(length - e.shape[0], length) if padding == "left" else slice(0, e.shape[0])
            embeds[i, span], mask[i, span], labels[i, span] = e, 1, t
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        lengths = mask.sum(1)
        answer = torch.full_like(lengths, length - 1) if padding == "left" else lengths - 1
        return SegmentBatch(embeds, mask, positions, labels, answer)

    @torch.no_grad()
    def prefix(self, segments: Sequence[Segment]) -> Prefix:
        """Run a prompt prefix shared by many prompts once; score them with ``prefix=``."""
        batch = self.embed([segments])
        out = self.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=True)
        return Prefix(out.past_key_values, batch.inputs_embeds.shape[1])

    def answer_logits(self, batch: SegmentBatch, prefix: Prefix | None = None) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at each row's answer position, from one forward pass
        in which the LM head sees only the answer positions. With ``prefix`` the batch (built
        with ``continuation=True``) follows that prefix's cached keys and values."""
        keep = torch.unique(batch.answer_pos)
        mask, positions = batch.attention_mask, batch.position_ids
        cache: Cache | None = None
        if prefix is not None:
            rows = mask.shape[0]
            cache = copy.deepcopy(prefix.cache)
            cache.batch_repeat_interleave(rows)
            mask = torch.cat([mask.new_ones(rows, prefix.length), mask], dim=1)
            positions = positions + prefix.length
        out = self.model(inputs_embeds=batch.inputs_embeds, attention_mask=mask,
                         position_ids=positions, past_key_values=cache, logits_to_keep=keep,
                         use_cache=cache is not None)
        col = torch.searchsorted(keep, batch.answer_pos)
        return out.logits[torch.arange(len(col), device=col.device), col]

    def yes_prob(self, batch: SegmentBatch, yes_no: Sequence[int],
                 prefix: Prefix | None = None) -> torch.Tensor:
        """P("Yes") of the two-way softmax over the Yes/No logits at the answer position."""
        return yes_share(self.answer_logits(batch, prefix), yes_no)

    @torch.no_grad()
    def score_after(self, head: str, tails: Sequence[Sequence[Segment]], batch_size: int,
                    read: Callable[[torch.Tensor], torch.Tensor]) -> Scored:
        """Score prompts ``head + tail`` in batches, left-padded, in eval mode: ``read`` turns
        the answer-position logits [B, V] into scores [B]. ``head`` runs once and is reused
        from the LM's cache when it is a clean token prefix of every prompt (each tail opens
        with a ``Text`` that ``splits_cleanly`` after it); otherwise every prompt runs whole."""
        self.model.eval()
        first = [t[0].text for t in tails if t and isinstance(t[0], Text)]
        reuse = len(first) == len(tails) and all(splits_cleanly(self.tokenizer, head, f) for f in first)
        prefix = self.prefix([Text(head)]) if reuse else None
        tokens = prefix.length if prefix is not None else 0
        out = []
        for chunk in batches(tails, batch_size):
            prompts = chunk if reuse else [[Text(head), *t] for t in chunk]
            batch = self.embed(prompts, padding="left", continuation=reuse)
            tokens += int(batch.attention_mask.sum())
            out.append(read(self.answer_logits(batch, prefix)).float().cpu().numpy())
        return Scored(np.concatenate(out), tokens)

    def lm_loss(self, batch: SegmentBatch) -> torch.Tensor:
        """Mean next-token cross-entropy over every text position (the whole prompt)."""
        return self.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids, labels=batch.labels,
                          use_cache=False).loss


def add_lora(model: torch.nn.Module, lora: LoraConfig) -> PeftModel:
    """Wrap a (frozen) causal LM with fresh trainable LoRA adapters."""
    import peft

    missing = [m for m in lora.target_modules
               if not any(name.endswith("." + m) for name, _ in model.named_modules())]
    if missing:
        raise ConfigError(f"LoRA target modules {missing} not found in {type(model).__name__}")
    cfg = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return peft.get_peft_model(model, cfg)


def save_adapter(model: PeftModel, folder: Path) -> Path:
    """Write the LoRA adapter (config + safetensors weights) into ``folder``."""
    model.save_pretrained(str(folder))  # peft types save_directory as str
    return folder


def load_adapter(base: torch.nn.Module, folder: Path) -> PeftModel:
    """A frozen base LM with the adapter saved in ``folder`` applied (inference mode)."""
    from peft import PeftModel

    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"{folder}: no LoRA adapter here (adapter_config.json missing)")
    return PeftModel.from_pretrained(base, folder, is_trainable=False)
