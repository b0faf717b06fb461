"""The twin's request and response shapes: vLLM's ``/v1/completions`` and ``/v1/chat/completions``.

``parse_ask`` checks a request body as vLLM's OpenAI server would and reduces it to what the simulator
needs (``Ask``: prompt tokens, output tokens, streaming). What the twin cannot honour is answered with a
400 in vLLM's error format naming the field (``param``), never ignored: ``n`` or ``best_of`` above 1,
a batch of several prompts, ``stop`` strings or ``stop_token_ids``, ``echo``, ``logprobs`` (and chat's
``top_logprobs``, ``prompt_logprobs``), tools. A prompt plus ``max_tokens`` past the model's context
length is vLLM's 400 too. ``Shapes`` builds the response bodies and SSE chunks of either endpoint.
See ``docs/twin.md``.

Public names: Ask, CHAT_DEFAULT_MAX_TOKENS, COMPLETIONS_DEFAULT_MAX_TOKENS, Shapes, TOKEN_TEXT, parse_ask,
prompt_token_count.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from greenrl.errors import InputError
from greenrl.live.http import HttpError
from greenrl.live.tokens import approx_prompt_tokens, prompt_tokens

__all__ = [
    "CHAT_DEFAULT_MAX_TOKENS",
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "TOKEN_TEXT",
    "Ask",
    "Shapes",
    "parse_ask",
    "prompt_token_count",
]

TOKEN_TEXT = " tok"
"""The text of every generated token."""

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""Output tokens of a completion without ``max_tokens`` (vLLM's and OpenAI's default)."""

CHAT_DEFAULT_MAX_TOKENS = 256
"""Output tokens of a chat completion without ``max_tokens`` / ``max_completion_tokens`` (at most what the
context leaves). vLLM generates until the end-of-sequence token or a full context; the twin has no
end-of-sequence token (every request generates exactly its ``max_tokens``), so it takes this bound."""


def prompt_token_count(prompt: Any) -> int:
    """Prompt length in tokens, by the live path's rule (``greenrl.live.tokens.prompt_tokens``).

    There is no tokenizer in the twin: a list of token ids counts its length, a text about one token per
    4 characters (at least 1), as the admission proxy counts it.

    Example:
        >>> prompt_token_count("the quick brown fox")
        5
        >>> prompt_token_count([1, 2, 3])
        3

    Raises:
        InputError: on an empty token list, a batch of prompts or anything else.
    """
    tokens = prompt_tokens(prompt)
    if tokens is None:
        raise InputError(
            "/v1/completions",
            "prompt",
            "must be a string or a non-empty list of token ids (batches of several prompts are not supported)",
            "send one prompt per request",
        )
    return tokens


@dataclass(frozen=True, slots=True)
class Ask:
    """A checked request, as the simulator serves it.

    Attributes:
        chat: a ``/v1/chat/completions`` request (else ``/v1/completions``).
        prompt_tokens: prompt length (tokens, the live path's rule).
        max_tokens: tokens to generate (the twin always generates all of them).
        stream: answer as server-sent events.
        include_usage: a stream ends with a ``usage`` chunk (``stream_options.include_usage``).
    """

    chat: bool
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool


def _bad(message: str, param: str) -> HttpError:
    return HttpError(400, message, param)


def _unsupported(body: dict[str, Any], chat: bool) -> None:
    """400 for every field the twin cannot honour (see the module docstring)."""
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and value != 1:
            raise _bad(f"{name} = {value!r}: the twin serves one sequence per request (n = 1)", name)
    stop = body.get("stop")
    if stop not in (None, "", []):
        raise _bad("stop sequences are not supported by the twin (its text is fixed tokens)", "stop")
    if body.get("stop_token_ids") not in (None, []):
        raise _bad("stop_token_ids are not supported by the twin", "stop_token_ids")
    if body.get("prompt_logprobs") is not None:
        raise _bad("prompt_logprobs are not supported by the twin", "prompt_logprobs")
    if chat:
        if body.get("logprobs") not in (None, False):
            raise _bad("logprobs are not supported by the twin", "logprobs")
        if body.get("top_logprobs") not in (None, 0):
            raise _bad("top_logprobs are not supported by the twin", "top_logprobs")
        if body.get("tools") not in (None, []):
            raise _bad("tools are not supported by the twin", "tools")
        return
    if body.get("echo") not in (None, False):
        raise _bad("echo is not supported by the twin", "echo")
    if body.get("logprobs") is not None:
        raise _bad("logprobs are not supported by the twin", "logprobs")
    if body.get("suffix") is not None:
        raise _bad("suffix is not supported by the twin", "suffix")


def _chat_prompt_tokens(messages: Any) -> int:
    """Prompt tokens of chat ``messages``, by the live path's rule (their text content, about 4 chars a token)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of message objects", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad("every message must be an object with a string role", "messages")
    return approx_prompt_tokens({"messages": messages})


def _max_tokens(body: dict[str, Any], chat: bool) -> tuple[int | None, str]:
    """The asked output length and the field that gave it (None: not given)."""
    for name in ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(f"{name} must be an integer >= 1, got {value!r}", name)
        return value, name
    return None, "max_tokens"


def parse_ask(body: dict[str, Any], *, chat: bool, model_name: str, max_model_len: int) -> Ask:
    """Check a request body as vLLM would and reduce it to an ``Ask``.

    Args:
        body: the parsed JSON body.
        chat: a ``/v1/chat/completions`` body (else ``/v1/completions``).
        model_name: the served model (another ``model`` is a 404).
        max_model_len: the context length (prompt + output tokens) in tokens.

    Raises:
        HttpError: 404 for another model, 400 (naming the field) for anything vLLM would refuse and for
            what the twin does not support.
    """
    model = body.get("model", model_name)
    if model != model_name:
        raise HttpError(404, f"The model `{model}` does not exist.", "model")
    _unsupported(body, chat)
    if chat:
        prompt = _chat_prompt_tokens(body.get("messages"))
    else:
        try:
            prompt = prompt_token_count(body.get("prompt"))
        except InputError as err:
            raise _bad(str(err), "prompt") from None
    asked, name = _max_tokens(body, chat)
    if asked is None:
        default = CHAT_DEFAULT_MAX_TOKENS if chat else COMPLETIONS_DEFAULT_MAX_TOKENS
        asked = max(1, min(default, max_model_len - prompt)) if chat else default
    if prompt + asked > max_model_len:
        where = "messages" if chat else "prompt"
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt + asked} tokens ({prompt} in the {where}, {asked} in the completion). "
            f"Please reduce the length of the {where} or completion.",
            name,
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise _bad(f"stream must be a boolean, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise _bad("Stream options can only be defined when `stream=True`.", "stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))
    return Ask(chat, prompt, asked, bool(stream), include_usage)


class Shapes:
    """The response bodies and SSE chunks of one request (vLLM's field names and object types).

    Args:
        ask: the request.
        model_name: the served model.
    """

    def __init__(self, ask: Ask, model_name: str) -> None:
        self.ask = ask
        prefix = "chatcmpl" if ask.chat else "cmpl"
        self.base: dict[str, Any] = {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}
        self.base["model"] = model_name

    def usage(self, completion_tokens: int) -> dict[str, int]:
        """The ``usage`` object for ``completion_tokens`` generated."""
        p = self.ask.prompt_tokens
        return {"prompt_tokens": p, "total_tokens": p + completion_tokens, "completion_tokens": completion_tokens}

    def _object(self, chunk: bool) -> str:
        if self.ask.chat:
            return "chat.completion.chunk" if chunk else "chat.completion"
        return "text_completion"

    def chunk(self, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        """One streamed chunk carrying ``text`` (chat: ``delta.content``; ``role``: the opening delta)."""
        if self.ask.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        choice["stop_reason"] = None
        return {**self.base, "object": self._object(True), "choices": [choice]}

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        """The last chunk of a stream with ``include_usage``: no choices, the usage."""
        return {**self.base, "object": self._object(True), "choices": [], "usage": self.usage(completion_tokens)}

    def whole(self, completion_tokens: int, finish_reason: str) -> dict[str, Any]:
        """The non-streamed answer with ``completion_tokens`` generated."""
        text = TOKEN_TEXT * completion_tokens
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        if self.ask.chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        out = {**self.base, "object": self._object(False), "choices": [choice]}
        out["usage"] = self.usage(completion_tokens)
        return out
