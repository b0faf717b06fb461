"""One token counting rule: the twin, the admission proxy and the load generator count prompts and streams alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greenrl.errors import InputError
from greenrl.live.http import sse_event
from greenrl.live.tokens import SseTokenCounter, approx_prompt_tokens, prompt_tokens
from greenrl.twin import prompt_token_count

PROMPTS: list[Any] = [
    "",
    "hi",
    "one two three four five six seven eight",
    "x" * 4001,
    [1, 2, 3],
    [[7] * 50],
    ["abcdefgh"],
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_twin_and_the_proxy_count_the_same_prompt_tokens(prompt: Any) -> None:
    assert prompt_token_count(prompt) == approx_prompt_tokens({"prompt": prompt}) == prompt_tokens(prompt)


@given(st.one_of(st.text(max_size=300), st.lists(st.integers(0, 2**31), min_size=1, max_size=50)))
def test_the_same_count_for_any_text_or_token_ids(prompt: Any) -> None:
    assert prompt_token_count(prompt) == approx_prompt_tokens({"prompt": prompt})


def test_what_the_twin_refuses_the_proxy_still_estimates() -> None:
    for bad in ([], [1.5], ["a", "b"], None, 3):
        with pytest.raises(InputError):
            prompt_token_count(bad)
        assert approx_prompt_tokens({"prompt": bad}) >= 1
    chat = {"messages": [{"role": "system", "content": "x" * 20}, {"role": "user", "content": "y" * 20}]}
    assert approx_prompt_tokens(chat) == 10 and approx_prompt_tokens(None) == 1


def _stream(chunks: list[Any]) -> bytes:
    return b"".join(sse_event(c) for c in chunks)


def test_sse_counter_one_token_per_text_chunk_or_the_usage_increase() -> None:
    sse = SseTokenCounter()
    data = _stream(
        [
            {"choices": [{"index": 0, "text": ""}]},  # no token yet
            {"choices": [{"index": 0, "text": " tok"}]},
            {"choices": [{"index": 0, "delta": {"content": "a"}}]},  # chat
            {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},  # no token
            {"choices": [{"text": "abc"}], "usage": {"completion_tokens": 5}},  # 3 tokens in one chunk
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}},  # final usage: none new
            "[DONE]",
            {"choices": [{"text": "after"}]},  # ignored
        ]
    )
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]  # events split across reads
    assert sum(sse.feed(p) for p in pieces) == 5 == sse.tokens
    assert sse.done and sse.error is None and sse.usage == {"prompt_tokens": 9, "completion_tokens": 5}


@pytest.mark.parametrize(
    ("payload", "start"),
    [(b"nonsense", "not JSON"), (b"[1, 2]", "not a JSON object"), (json.dumps({"object": "error"}).encode(), "{")],
)
def test_sse_counter_keeps_the_first_bad_event(payload: bytes, start: str) -> None:
    sse = SseTokenCounter()
    assert sse.feed(b"data: " + payload + b"\r\n\r\n" + sse_event({"choices": [{"text": "x"}]})) == 1
    assert sse.error is not None and sse.error.startswith(start) and not sse.done
