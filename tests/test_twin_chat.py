"""The twin's OpenAI protocol (chat, errors, unsupported fields, model card, client gone) and the admission
proxy in front of it with chat; the official ``openai`` client against both."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from greenrl.live.http import HttpError
from greenrl.live.proxy import AdmissionProxy
from greenrl.live.tokens import approx_prompt_tokens
from greenrl.slo import Slo, SloJudge
from greenrl.twin import LiveSim, TwinServer, serving_in_thread
from greenrl.twin.protocol import CHAT_DEFAULT_MAX_TOKENS, parse_ask

TIME_SCALE = 50.0
"""Simulated seconds per wall second of the module's twin (conftest's ``twin`` fixture)."""

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "one two three four five six seven"}]},
]


def _send(url: str, body: dict[str, Any] | bytes, timeout_s: float = 20.0) -> tuple[int, dict[str, Any], bytes]:
    """POST ``body``; the status, the JSON body (``{}`` for a stream) and the raw bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    is_json = raw.startswith(b"{")
    return status, json.loads(raw) if is_json else {}, raw


def _events(raw: bytes) -> list[dict[str, Any] | str]:
    """The ``data:`` payloads of an SSE body (``[DONE]`` as a string)."""
    out: list[dict[str, Any] | str] = []
    for event in raw.decode().split("\n\n"):
        if event.startswith("data: "):
            data = event[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ------------------------------------------------------------------------------------------ chat on the twin


def test_chat_non_streamed_message_and_usage(twin: str) -> None:
    status, out, _ = _send(f"{twin}/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 5})
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == " tok" * 5
    assert choice["finish_reason"] == "length"
    prompt = approx_prompt_tokens({"messages": MESSAGES})  # the project's one rule: the messages' text
    assert out["usage"] == {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}
    # max_completion_tokens (the newer name) wins over max_tokens
    status, out, _ = _send(
        f"{twin}/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 3, "max_tokens": 9}
    )
    assert status == 200 and out["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_streams_role_then_content_deltas(twin: str, include_usage: bool) -> None:
    body: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 6, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, _, raw = _send(f"{twin}/v1/chat/completions", body)
    assert status == 200
    events = _events(raw)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["delta"]["content"] for c in content] == [" tok"] * 6
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 5 + ["length"]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
        assert chunks[-1]["usage"]["prompt_tokens"] == approx_prompt_tokens({"messages": MESSAGES})
    else:
        assert all("usage" not in c for c in chunks)


# ------------------------------------------------------------------------------------------ errors


def _error(raw: bytes) -> dict[str, Any]:
    body = json.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("completions", {"prompt": "hi", "n": 2}, "n"),
        ("completions", {"prompt": "hi", "best_of": 3}, "best_of"),
        ("completions", {"prompt": ["a", "b"]}, "prompt"),
        ("completions", {"prompt": [[1, 2], [3]]}, "prompt"),
        ("completions", {"prompt": "hi", "stop": ["\n"]}, "stop"),
        ("completions", {"prompt": "hi", "echo": True}, "echo"),
        ("completions", {"prompt": "hi", "logprobs": 2}, "logprobs"),
        ("completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
        ("chat/completions", {"messages": MESSAGES, "n": 2}, "n"),
        ("chat/completions", {"messages": MESSAGES, "stop": "x"}, "stop"),
        ("chat/completions", {"messages": MESSAGES, "logprobs": True}, "logprobs"),
        ("chat/completions", {"messages": []}, "messages"),
        ("chat/completions", {"messages": [{"content": "no role"}]}, "messages"),
        ("chat/completions", {"messages": MESSAGES, "max_completion_tokens": -1}, "max_completion_tokens"),
    ],
)
def test_unsupported_or_bad_fields_are_a_400_naming_the_field(
    twin: str, path: str, body: dict[str, Any], param: str
) -> None:
    status, _, raw = _send(f"{twin}/v1/{path}", body)
    assert status == 400
    err = _error(raw)
    assert (err["type"], err["param"], err["code"]) == ("BadRequestError", param, 400)


def test_context_overflow_other_model_and_paths_are_vllm_errors(twin: str) -> None:
    status, _, raw = _send(f"{twin}/v1/models", b"")  # a POST
    assert status == 405 and _error(raw)["code"] == 405
    with urllib.request.urlopen(f"{twin}/v1/models", timeout=5.0) as r:
        (card,) = json.loads(r.read())["data"]
    max_len = card["max_model_len"]
    assert card["id"] == card["root"] == "llama-3.1-8b" and card["parent"] is None and max_len > 1000
    for path, body in (
        ("completions", {"prompt": "x" * 400, "max_tokens": max_len - 99}),  # 100 prompt tokens
        ("chat/completions", {"messages": [{"role": "user", "content": "x" * 4 * max_len}]}),
    ):
        status, _, raw = _send(f"{twin}/v1/{path}", body)
        err = _error(raw)
        assert status == 400 and "maximum context length is" in err["message"] and err["param"] == "max_tokens"
    status, _, raw = _send(f"{twin}/v1/chat/completions", {"messages": MESSAGES, "model": "other"})
    assert status == 404 and _error(raw)["type"] == "NotFoundError" and _error(raw)["param"] == "model"
    status, _, raw = _send(f"{twin}/v1/completions", b"{not json")
    assert status == 400 and _error(raw)["type"] == "BadRequestError"
    status, _, raw = _send(f"{twin}/v1/nope", {})
    assert status == 404 and _error(raw)["type"] == "NotFoundError"


def test_the_context_length_bounds_prompt_plus_max_tokens() -> None:
    ask = parse_ask({"prompt": "x" * 360, "max_tokens": 10}, chat=False, model_name="m", max_model_len=100)
    assert (ask.prompt_tokens, ask.max_tokens, ask.stream) == (90, 10, False)
    with pytest.raises(HttpError, match="maximum context length is 100 tokens") as err:
        parse_ask({"prompt": "x" * 360, "max_tokens": 11}, chat=False, model_name="m", max_model_len=100)
    assert (err.value.status, err.value.param) == (400, "max_tokens")
    # a chat without max_tokens gets what the context leaves, at most CHAT_DEFAULT_MAX_TOKENS
    chat = {"messages": [{"role": "user", "content": "x" * 360}]}
    assert parse_ask(chat, chat=True, model_name="m", max_model_len=100).max_tokens == 10
    assert parse_ask(chat, chat=True, model_name="m", max_model_len=10**6).max_tokens == CHAT_DEFAULT_MAX_TOKENS
    assert parse_ask({"prompt": "x"}, chat=False, model_name="m", max_model_len=100).max_tokens == 16


# ------------------------------------------------------------------------------------------ client gone


@pytest.fixture
def in_process() -> Iterator[TwinServer]:
    """A twin in this process (its simulator readable), on its own loop thread."""
    sim = LiveSim.from_scenario("tiny", capacity=16)
    with serving_in_thread(TwinServer(sim, model_name="m", time_scale=5.0, tick_s=0.01, port=0)) as server:
        yield server


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_non_streamed_request_whose_client_leaves_is_aborted(in_process: TwinServer, path: str) -> None:
    body = {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": 50_000}
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", in_process.port), timeout=5.0) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        deadline = time.monotonic() + 5.0
        while in_process.sim.injected == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    # closed before any answer: the simulated request is cut short, not generated to its 50,000 tokens
    deadline = time.monotonic() + 5.0
    while in_process.sim.progress(0).state != "finished":
        assert time.monotonic() < deadline, in_process.sim.progress(0)
        time.sleep(0.02)
    assert in_process.sim.progress(0).generated < 1000


# ------------------------------------------------------------------------------------------ the proxy, with chat


def test_proxy_forwards_caps_and_counts_chat_like_completions(twin: str) -> None:
    slo = SloJudge(Slo(ttft_floor_s=5.0, ttft_prefill_multiple=0.0, tbt_mean_s=1.0))
    with AdmissionProxy(twin, cap=2, slo=slo) as proxy:
        bodies: list[dict[str, Any]] = [
            {"messages": MESSAGES, "max_tokens": 40, "stream": True, "stream_options": {"include_usage": True}},
            {"messages": MESSAGES, "max_tokens": 40, "stream": True},  # no usage: the proxy counts deltas
            {"messages": MESSAGES, "max_tokens": 40},
            {"prompt": "one two three four five six seven", "max_tokens": 40, "stream": True},
            {"messages": MESSAGES, "max_tokens": 40, "stream": True},
        ]
        results: list[tuple[int, dict[str, Any], bytes] | None] = [None] * len(bodies)

        def one(k: int) -> None:
            path = "chat/completions" if "messages" in bodies[k] else "completions"
            results[k] = _send(f"{proxy.url}/v1/{path}", bodies[k], timeout_s=30.0)

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40.0)
        for body, res in zip(bodies, results, strict=True):
            assert res is not None and res[0] == 200
            if body.get("stream"):
                choices = [e["choices"][0] for e in _events(res[2]) if isinstance(e, dict) and e["choices"]]
                texts = [c["delta"].get("content") if "delta" in c else c["text"] for c in choices]
                assert texts.count(" tok") == 40
            else:
                assert res[1]["usage"]["completion_tokens"] == 40
        bad = _send(f"{proxy.url}/v1/chat/completions", {"messages": MESSAGES, "n": 3})
        assert bad[0] == 400 and _error(bad[2])["param"] == "n"  # the twin's 400 passes through as it is
        gone = _send(f"{proxy.url}/greenrl/knobs", {})  # not forwarded: the proxy's own 404, same format
        assert gone[0] == 404 and _error(gone[2])["type"] == "NotFoundError"
        s = proxy.stats()
    assert s["arrived"] == 6 and s["finished"] == 5 and s["errors"] == 1 and s["max_in_flight"] == 2
    assert s["output_tokens"] == 200 and s["in_flight"] == 0 and s["pending_first_token"] == 0
    chat = approx_prompt_tokens({"messages": MESSAGES})
    assert s["prompt_tokens"] == 5 * chat + approx_prompt_tokens({"prompt": "one two three four five six seven"})
    assert (s["slo_met"], s["missed"]) == (5, 0)


# ------------------------------------------------------------------------------------------ the openai client


@pytest.mark.parametrize("through_proxy", [False, True])
def test_the_official_openai_client(twin: str, through_proxy: bool) -> None:
    openai = pytest.importorskip("openai")
    proxy = AdmissionProxy(twin, cap=4) if through_proxy else None
    base = proxy.start() if proxy is not None else twin
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30.0)
        (model,) = [m.id for m in client.models.list()]
        out = client.completions.create(model=model, prompt="hello there", max_tokens=4)
        assert out.choices[0].text == " tok" * 4 and out.usage is not None and out.usage.completion_tokens == 4
        pieces = []
        stream = client.completions.create(
            model=model, prompt="hello there", max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
        for chunk in stream:
            pieces += [c.text for c in chunk.choices]
            usage = chunk.usage
        assert "".join(pieces) == " tok" * 4 and usage is not None and usage.completion_tokens == 4
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert chat.choices[0].message.content == " tok" * 3 and chat.choices[0].finish_reason == "length"
        assert chat.usage is not None and chat.usage.prompt_tokens == 1 and chat.usage.total_tokens == 4
        deltas, usage = [], None
        for chunk in client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        ):
            deltas += [c.delta.content or "" for c in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(deltas) == " tok" * 5 and usage is not None and usage.completion_tokens == 5
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
        assert isinstance(err.value.body, dict) and err.value.body["param"] == "n"
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="other", prompt="x", max_tokens=1)
        if proxy is not None:
            s = proxy.stats()
            assert s["finished"] == 4 and s["errors"] == 2 and s["output_tokens"] == 16
    finally:
        if proxy is not None:
            proxy.stop()
