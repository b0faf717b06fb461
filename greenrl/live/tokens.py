"""Token counting on the live path: the prompt tokens of a request and the tokens of an SSE stream.

One rule for the twin, the admission proxy and the load generator, so they count alike:

* prompt: the exact length when the prompt is a list of token ids (or a batch of one such list), else
  about one token per ``CHARS_PER_TOKEN`` characters of text (at least 1), from a completions ``prompt``
  or the ``content`` of chat ``messages``. No tokenizer is loaded; 4 characters a token is the usual
  figure for English text with the BPE tokenizers of Llama-class models.
* stream: ``SseTokenCounter`` reads an OpenAI-compatible SSE stream in byte pieces. A chunk that carries
  a cumulative ``usage.completion_tokens`` (vLLM with ``stream_options.continuous_usage_stats``, and the
  final usage chunk of ``include_usage``) adds its increase over the tokens counted so far, so a chunk
  carrying several tokens counts them all; any other chunk adds one token when a choice carries text
  (``text`` or ``delta.content`` not empty).

Public names: CHARS_PER_TOKEN, SseTokenCounter, approx_prompt_tokens, prompt_tokens, text_tokens,
token_ids_length.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "SseTokenCounter",
    "approx_prompt_tokens",
    "prompt_tokens",
    "text_tokens",
    "token_ids_length",
]

CHARS_PER_TOKEN = 4
"""Characters of text per prompt token, for text prompts (no tokenizer)."""


def text_tokens(text: str) -> int:
    """About one token per ``CHARS_PER_TOKEN`` characters, at least 1.

    Example:
        >>> text_tokens("x" * 40), text_tokens("")
        (10, 1)
    """
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def token_ids_length(prompt: Any) -> int | None:
    """The length of a prompt of token ids (a non-empty list of ints, or a batch of one), else None."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt)
    return None


def prompt_tokens(prompt: Any) -> int | None:
    """Tokens of one completions ``prompt``: text, token ids, or a batch of one of either; None otherwise.

    Example:
        >>> prompt_tokens("the quick brown fox"), prompt_tokens([1, 2, 3]), prompt_tokens(["ab"]), prompt_tokens([])
        (5, 3, 1, None)
    """
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return text_tokens(prompt)
    return token_ids_length(prompt)


def approx_prompt_tokens(body: Any) -> int:
    """Prompt tokens of a request body: exact for token ids, else from the text of ``prompt`` and ``messages``.

    Equals ``prompt_tokens(body["prompt"])`` for every prompt that accepts; at least 1 for any body.

    Example:
        >>> approx_prompt_tokens({"prompt": [5, 6, 7]}), approx_prompt_tokens({"prompt": "x" * 40})
        (3, 10)
        >>> approx_prompt_tokens({"messages": [{"role": "user", "content": "hello there"}]})
        3
    """
    if not isinstance(body, dict):
        return 1
    ids = token_ids_length(body.get("prompt"))
    if ids is not None:
        return ids
    texts: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for v in value:
                collect(v)
        elif isinstance(value, dict):
            collect(value.get("content", value.get("text", "")))

    collect(body.get("prompt", ""))
    collect(body.get("messages", []))
    return text_tokens("".join(texts))


class SseTokenCounter:
    """Counts the tokens of an OpenAI-compatible SSE stream fed in byte pieces (see the module docstring).

    Attributes:
        tokens: tokens counted so far.
        usage: the last ``usage`` object seen (None before one).
        done: whether ``data: [DONE]`` was seen (later data is ignored).
        error: the first bad event (not JSON, not an object, or an error object), as text; None if none.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.error: str | None = None
        self._buf = b""

    def feed(self, data: bytes) -> int:
        """Add bytes of the stream; returns the tokens of the events they complete."""
        self._buf = (self._buf + data).replace(b"\r\n", b"\n")
        *events, self._buf = self._buf.split(b"\n\n")
        before = self.tokens
        for event in events:
            for line in event.split(b"\n"):
                if self.done or not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                elif payload:
                    self._payload(payload)
        return self.tokens - before

    def _payload(self, payload: bytes) -> None:
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.error = self.error or f"not JSON: {payload[:200].decode(errors='replace')}"
            return
        if not isinstance(chunk, dict):
            self.error = self.error or f"not a JSON object: {payload[:200].decode(errors='replace')}"
            return
        if chunk.get("object") == "error" or "error" in chunk:
            self.error = self.error or json.dumps(chunk)[:300]
            return
        self.add(chunk)

    def add(self, chunk: dict[str, Any]) -> int:
        """Count one parsed chunk; returns its new tokens."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        cumulative = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(cumulative, int) and not isinstance(cumulative, bool):
            new = max(cumulative - self.tokens, 0)
        else:
            new = 1 if any(_has_token(c) for c in chunk.get("choices") or []) else 0
        self.tokens += new
        return new


def _has_token(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    if isinstance(choice.get("text"), str) and choice["text"]:
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and isinstance(delta.get("content"), str) and bool(delta["content"])
