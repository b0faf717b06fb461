"""guidellm (the vLLM project's serving benchmark) runs against the twin and through the admission proxy in
front of it: the third-party client the live path must serve as vLLM would (issue #15).

guidellm sends chat completions with ``stream_options.continuous_usage_stats`` and ``max_completion_tokens``,
validates the backend on ``/health`` and ``/v1/models``, and needs a Hugging Face tokenizer for its synthetic
prompts. With no network, the tokenizer is built here from Faker's lorem word list (the words guidellm's
synthetic prompts are made of), one token per word.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greenrl.live.proxy import AdmissionProxy

# guidellm runs in a subprocess only: importing it installs uvloop's event loop policy for the whole session
pytestmark = pytest.mark.skipif(importlib.util.find_spec("guidellm") is None, reason="guidellm is not installed")

TIME_SCALE = 20.0
"""Simulated seconds per wall second of the module's twin (conftest's ``twin`` fixture)."""

REQUESTS, STREAMS, OUTPUT_TOKENS = 12, 4, 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level fast tokenizer over Faker's lorem words, saved as a Hugging Face tokenizer folder."""
    from faker.providers.lorem.en_US import Provider
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    lorem = set(Provider.word_list)
    words = ["<unk>", "<s>", "</s>", ".", ","] + sorted(lorem | {w.capitalize() for w in lorem})
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        path
    )
    return path


def _guidellm(target: str, tokenizer: Path, out_dir: Path) -> dict[str, Any]:
    """One guidellm benchmark (``STREAMS`` concurrent streams, ``REQUESTS`` requests); its JSON report."""
    command = [
        sys.executable,
        "-m",
        "guidellm",
        "run",
        "--backend",
        f"kind=openai_http,target={target}",
        "--tokenizer",
        f"kind=hf_auto,model={tokenizer}",
        "--data",
        f"kind=synthetic_text,prompt_tokens=64,output_tokens={OUTPUT_TOKENS}",
        "--profile",
        f"kind=concurrent,streams={STREAMS}",
        "--constraint",
        f"kind=max_requests,count={REQUESTS}",
        "--output",
        f"kind=json,path={out_dir / 'report.json'}",
        "--disable-console-interactive",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=out_dir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((out_dir / "report.json").read_text())
    return report


@pytest.mark.parametrize("through_proxy", [False, True])
def test_guidellm_run_completes_every_request(
    twin: str, tokenizer_dir: Path, tmp_path: Path, through_proxy: bool
) -> None:
    proxy = AdmissionProxy(twin, cap=2) if through_proxy else None  # a cap below the streams: requests queue
    base = proxy.start() if proxy is not None else twin
    try:
        report = _guidellm(base, tokenizer_dir, tmp_path)
        stats = proxy.stats() if proxy is not None else None
    finally:
        if proxy is not None:
            proxy.stop()
    (bench,) = report["benchmarks"]
    requests = bench["requests"]
    assert len(requests["errored"]) == 0, [r["info"]["error"] for r in requests["errored"]]
    assert len(requests["successful"]) == REQUESTS and len(requests["incomplete"]) == 0
    for r in requests["successful"]:
        body = json.loads(r["request_args"])["body"]
        assert "messages" in body and body["stream"] is True  # guidellm's default: streamed chat
        assert r["output"] == " tok" * OUTPUT_TOKENS
        assert r["output_metrics"]["text_tokens"] == OUTPUT_TOKENS  # from the twin's usage
        assert r["input_metrics"]["text_tokens"] > 0
    if stats is not None:  # the proxy capped, forwarded and counted guidellm's chat like completions
        assert stats["errors"] == 0
        assert stats["finished"] == REQUESTS
        assert stats["output_tokens"] == REQUESTS * OUTPUT_TOKENS
