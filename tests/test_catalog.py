from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenrl.catalog import load_gpu, load_model, model_names
from greenrl.errors import InputError

CARDS = sorted(Path("greenrl/data/models").glob("*.json"))


@pytest.mark.parametrize("path", CARDS, ids=[p.stem for p in CARDS])
def test_card_parameter_count_matches_official(path: Path) -> None:
    raw = json.loads(path.read_text())
    card = load_model(raw["name"])
    # Cards for multimodal checkpoints (Gemma-3) miss the vision tower: allow 6%.
    assert card.total_params / 1e9 == pytest.approx(raw["params_billions"], rel=0.06)


def test_aliases_resolve_to_one_card() -> None:
    seen: dict[str, str] = {}
    for path in CARDS:
        raw = json.loads(path.read_text())
        for alias in raw["aliases"]:
            assert seen.setdefault(alias.lower(), raw["name"]) == raw["name"], alias
    assert load_model("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    assert "llama-2-70b" in model_names()


def test_config_json_path(tmp_path: Path) -> None:
    config = {
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    card = load_model(str(path))
    assert card.total_params == load_model("llama-3.1-8b").total_params
    assert card.kv_bytes_per_token_per_gpu(1) == 2 * 32 * 8 * 128 * 2


@pytest.mark.parametrize(
    "field", ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"]
)
def test_config_missing_field_names_file_and_field(tmp_path: Path, field: str) -> None:
    config = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
    del config[field]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError) as err:
        load_model(str(path))
    assert str(path) in str(err.value) and field in str(err.value)


def test_moe_card_counts_active_experts_only() -> None:
    mixtral = load_model("mixtral-8x7b")
    assert mixtral.num_experts == 8 and mixtral.experts_per_token == 2
    assert mixtral.active_params_per_token < 0.35 * mixtral.total_params


def test_fp8_dtype_halves_weight_bytes() -> None:
    assert load_model("llama-3.1-70b", "fp8").weight_bytes == pytest.approx(
        load_model("llama-3.1-70b").weight_bytes / 2
    )


def test_tp_checks() -> None:
    card = load_model("llama-2-70b")
    card.check_tp(8)
    with pytest.raises(InputError, match="does not divide"):
        card.check_tp(3)


def test_gpu_clock_grid_says_nearest_valid() -> None:
    h100 = load_gpu("h100")
    assert h100.check_clock(1605) == 1605
    with pytest.raises(InputError, match="1590 or 1605"):
        h100.check_clock(1600)
    with pytest.raises(InputError, match="use 1980"):
        h100.check_clock(2500)
    with pytest.raises(InputError, match="unknown GPU"):
        load_gpu("tpu-v5")
