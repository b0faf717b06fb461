"""Load generator: replay a workload against an OpenAI-compatible completions endpoint, streaming.

Each request of a ``Trace`` (arrival time, prompt length, output length; a scenario's trace window or
synthetic workload, see ``greenrl.workload``) is sent at its arrival time divided by ``time_scale``
(wall seconds; use the twin's ``--time-scale``) as ``POST /v1/completions`` with

* ``prompt``: a list of exactly ``input_tokens`` token ids (vLLM and the twin count a list of ids
  exactly; the ids are drawn per request from a seeded generator, so prompts share no prefix that a
  prefix cache could reuse),
* ``max_tokens`` = ``output_tokens`` with ``ignore_eos: true`` (every request generates all of them),
* ``stream: true`` with ``stream_options: {include_usage: true, continuous_usage_stats: true}``.

Client-side timing, per request, in wall seconds: TTFT is from just before the request is sent to the
first chunk that carries a token; the mean time between tokens is (last token - first token) / (tokens
- 1). Tokens are counted by the rule of ``greenrl.live.tokens`` (shared with the twin and the proxy):
one SSE chunk may carry more than one token (vLLM can batch its stream), so a chunk's token count is
the increase of its cumulative ``usage.completion_tokens`` when the server sends it (vLLM does with
``continuous_usage_stats``), else 1 per chunk whose choice carries text; a final usage chunk that reports
more tokens than were counted adds the rest at its arrival. Concurrency is bounded by a semaphore (a
request whose slot is not free waits, so it is sent late; ``sent_at_s`` shows it), and every wait has a
deadline: connect and read timeouts, a per-request limit and a drain limit after the last send.

``LoadGenerator.run()`` is the asyncio core; ``start()`` / ``sent()`` / ``records()`` / ``stop()`` run it
in a background thread with its own event loop, for synchronous callers such as ``LiveNode``.
``python -m greenrl.live.loadgen`` replays a scenario's window and prints a summary.

Modules, one job each: ``generator`` (``LoadGenerator``: pacing, streaming, timeouts), ``records``
(``SentRequest``, ``RequestRecord``, a response's token timing), ``summary`` (``RequestSlo``: the
scenario's SLO on the records; ``summarize``), ``cli`` (``main``, ``scenario_trace``).

Public names: LoadGenerator, RequestRecord, RequestSlo, SentRequest, main, scenario_trace, summarize.
"""

from greenrl.live.loadgen.cli import main, scenario_trace
from greenrl.live.loadgen.generator import LoadGenerator
from greenrl.live.loadgen.records import RequestRecord, SentRequest
from greenrl.live.loadgen.summary import RequestSlo, summarize

__all__ = [
    "LoadGenerator",
    "RequestRecord",
    "RequestSlo",
    "SentRequest",
    "main",
    "scenario_trace",
    "summarize",
]
