"""Model cards: the Hugging Face ``config.json`` fields that set an LLM's compute, memory and traffic.

A card comes from the built-in catalog (``greenrl/data/models/*.json``, each with its source) or from
a path to any ``config.json``, so users can bring their own model.

Public names: ModelCard, load_model, model_names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from greenrl.errors import InputError

__all__ = ["ModelCard", "load_model", "model_names"]

_DTYPE_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 2.0, "fp8": 1.0, "float8": 1.0, "int8": 1.0}
# float32 checkpoints are served in 16-bit by vLLM's `--dtype auto`, hence 2 bytes.
_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Architecture of a decoder-only transformer (dense or mixture-of-experts).

    Attributes:
        name: catalog name or the config path it came from.
        num_layers, hidden_size, num_heads, num_kv_heads, head_dim, intermediate_size, vocab_size:
            the config.json fields (``intermediate_size`` is per expert for MoE).
        weight_bytes_per_param: bytes per weight as served (2 for 16-bit, 1 for FP8).
        num_experts, experts_per_token: 1 and 1 for dense models.
        gated_mlp: three MLP matrices (SwiGLU/GeGLU) rather than two.
        tied_embeddings: the LM head shares the embedding matrix.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    weight_bytes_per_param: float = 2.0
    num_experts: int = 1
    experts_per_token: int = 1
    gated_mlp: bool = True
    tied_embeddings: bool = False

    # Parameter counts (whole model, all GPUs).
    @property
    def attn_params_per_layer(self) -> int:
        """Q, K, V and output projections of one layer."""
        q_o = 2 * self.hidden_size * self.num_heads * self.head_dim
        return q_o + 2 * self.hidden_size * self.num_kv_heads * self.head_dim

    @property
    def expert_params_per_layer(self) -> int:
        """One expert's MLP (the whole MLP for a dense model)."""
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        """Embedding table plus an untied LM head."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def total_params(self) -> int:
        """All weights (norms and biases neglected)."""
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        per_layer = self.attn_params_per_layer + self.num_experts * self.expert_params_per_layer + router
        return self.num_layers * per_layer + self.embedding_params

    @property
    def active_params_per_token(self) -> int:
        """Weights one token multiplies through in the transformer layers (LM head excluded)."""
        return self.num_layers * (self.attn_params_per_layer + self.experts_per_token * self.expert_params_per_layer)

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights as served (B)."""
        return self.total_params * self.weight_bytes_per_param

    def kv_heads_per_gpu(self, tp: int) -> float:
        """KV heads each GPU stores: sharded when tp <= kv heads, else replicated one per GPU."""
        return max(1.0, self.num_kv_heads / tp)

    def kv_bytes_per_token_per_gpu(self, tp: int, kv_dtype_bytes: float = 2.0) -> float:
        """KV-cache bytes one token of context occupies on each GPU of a TP group (B)."""
        return 2.0 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_dim * kv_dtype_bytes

    def check_tp(self, tp: int, where: str = "--tp") -> None:
        """Raise unless vLLM can shard this model over ``tp`` GPUs."""
        if tp < 1 or self.num_heads % tp:
            raise InputError(
                where,
                "tp",
                f"tensor-parallel degree {tp} does not divide {self.name}'s {self.num_heads} attention heads",
                f"use one of {', '.join(str(d) for d in _divisors(self.num_heads) if d <= 8)}",
            )
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise InputError(
                where,
                "tp",
                f"tensor-parallel degree {tp} neither divides nor is a multiple of {self.num_kv_heads} KV heads",
                "use a TP degree that divides the KV heads (or a multiple of them)",
            )


def _divisors(n: int, limit: int = 64) -> list[int]:
    """Divisors of ``n`` up to ``limit`` (a TP degree is small; never loop to a huge head count)."""
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


MAX_FIELD = 2**31 - 1
"""The largest config.json size field accepted (hidden sizes, heads, layers, vocab, experts)."""


def _int_field(config: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    """A positive integer field (``default`` when absent or null); anything else is an InputError."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if value is None:
        raise InputError(where, key, "missing from the model config", f"add the config.json field {key!r}")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_FIELD:
        raise InputError(
            where,
            key,
            f"must be a positive integer up to {MAX_FIELD}, got {value!r}"[:200],
            "copy it from the model's config.json (a number, not text)",
        )
    return value


def card_from_config(config: dict[str, Any], name: str, where: str, dtype: str | None = None) -> ModelCard:
    """Build a card from config.json fields; ``where`` names the file in error messages."""
    for key in _REQUIRED:
        _int_field(config, key, where)
    heads = config["num_attention_heads"]
    kv = _int_field(config, "num_key_value_heads", where, default=heads)
    head_dim = _int_field(config, "head_dim", where, default=config["hidden_size"] // heads or None)
    torch_dtype = str(dtype or config.get("torch_dtype") or "bfloat16").lower()
    if torch_dtype not in _DTYPE_BYTES:
        raise InputError(
            where, "torch_dtype", f"unsupported dtype {torch_dtype!r}"[:200], f"use {', '.join(_DTYPE_BYTES)}"
        )
    experts = _int_field(config, "num_local_experts", where, default=1)
    topk = _int_field(config, "num_experts_per_tok", where, default=1) if experts > 1 else 1
    if topk > experts:
        raise InputError(
            where,
            "num_experts_per_tok",
            f"{topk} experts per token but only {experts} experts (num_local_experts)",
            "check config.json",
        )
    for key in ("gated_mlp", "tie_word_embeddings"):
        if not isinstance(config.get(key, False), bool):
            raise InputError(where, key, f"must be true or false, got {config[key]!r}"[:200], "write true or false")
    if heads % kv:
        raise InputError(where, "num_key_value_heads", f"{kv} does not divide {heads} heads", "check config.json")
    return ModelCard(
        name=name,
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        num_heads=heads,
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        weight_bytes_per_param=_DTYPE_BYTES[torch_dtype],
        num_experts=experts,
        experts_per_token=topk,
        gated_mlp=bool(config.get("gated_mlp", True)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


@cache
def _builtin() -> dict[str, tuple[str, dict[str, Any]]]:
    """Map each alias (lower case) to (canonical name, config)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    folder = resources.files("greenrl").joinpath("data/models")
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        card = json.loads(entry.read_text())
        for alias in [card["name"], card.get("hf_id", ""), *card.get("aliases", [])]:
            if alias:
                out[alias.lower()] = (card["name"], card["config"])
    return out


def model_names() -> list[str]:
    """Canonical names of the built-in model cards."""
    return sorted({name for name, _ in _builtin().values()})


def load_model(name_or_path: str, dtype: str | None = None, where: str = "--model") -> ModelCard:
    """A built-in card by name/alias, or a card read from a ``config.json`` path.

    Args:
        name_or_path: catalog name, Hugging Face id or alias, or a path to a config.json.
        dtype: serve the weights in this dtype instead of the config's (``fp8``, ``bfloat16``).
        where: what to name in error messages.
    """
    hit = _builtin().get(name_or_path.lower())
    if hit is not None:
        return card_from_config(hit[1], hit[0], f"built-in model {hit[0]}", dtype)
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(where, "model", f"no such file {path}", "give a path to a config.json") from None
        except json.JSONDecodeError as err:
            raise InputError(
                str(path), "model", f"not valid JSON ({err.msg}, line {err.lineno})", "fix the file"
            ) from None
        except (OSError, UnicodeDecodeError, RecursionError, ValueError) as err:  # a folder, binary, too deep
            raise InputError(
                str(path), "model", f"cannot be read as a JSON file ({type(err).__name__})", "give a config.json file"
            ) from None
        if not isinstance(config, dict):
            raise InputError(str(path), "model", "not a JSON object", "give a Hugging Face config.json")
        return card_from_config(config, str(path), str(path), dtype)
    close = [n for n in model_names() if name_or_path.lower().split("/")[-1][:6] in n][:5]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InputError(
        where,
        "model",
        f"unknown model {name_or_path!r}",
        f"{hint}use a built-in name (python -m greenrl.predict --list-models) or a path to a config.json",
    )


def params_billions(card: ModelCard) -> float:
    """Total parameters in billions, rounded for display."""
    return math.floor(card.total_params / 1e7) / 100
