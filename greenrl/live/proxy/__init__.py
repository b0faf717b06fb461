"""Admission proxy: an OpenAI-compatible HTTP proxy in front of vLLM that enforces ``max_num_seqs`` and counts.

vLLM fixes ``--max-num-seqs`` at launch. ``AdmissionProxy`` makes it a live knob: at most ``cap`` requests
are in flight upstream, the others wait in the proxy in arrival order (FIFO). Nothing is rejected or
dropped by the proxy's own doing:

* a waiting request is never refused; ``set_cap(n)`` changes the cap at once (requests already upstream
  finish, the next ones wait for room);
* ``pause()`` holds new admissions, ``drain(timeout_s)`` pauses and waits until nothing is in flight
  upstream, ``resume()`` sends what was held (the launcher's TP restart uses these);
* when the upstream connection fails before any byte reached the client (the server is restarting or
  crashed), the request gives its slot back, waits until ``GET /health`` answers 200, and is sent again
  at the head of the queue: at most ``max_retries`` times and ``retry_wait_s`` seconds in all, after
  which the client gets a 503. A failure after bytes reached the client cuts that response (counted in
  ``errors``), and so counts a 200 stream that carries an error event (vLLM's mid-stream
  ``data: {"error": {...}}``): it is relayed as it came, but is neither ``finished`` nor SLO met.

Forwarded: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (admission-controlled; SSE streams
relayed as they come), and reads passed through as they are (``GET /v1/models``, ``/v1/models/<id>``,
``/health``, ``/metrics``, ``/version``, ``/ping``). Nothing else is forwarded (404 in vLLM's format): no
control path such as the twin's ``POST /greenrl/knobs`` reaches the server through the proxy.
``GET /greenrl/proxy`` answers the proxy's counters as JSON (``stats()``).

Counters, as the front end sees them: arrivals; prompt tokens and streamed tokens, counted by the rules of
``greenrl.live.tokens`` (the twin's and the load generator's); per request, TTFT (arrival at the proxy to
the first token chunk sent on, proxy queueing included) and mean time between tokens; and, given an
``SloJudge`` (``greenrl.slo``: the scenario's SLO, the TTFT bound of each request from its prompt's
prefill-alone time, as the simulator judges it), whether the request met it.

``pending_first_token`` counts admission-controlled requests from arrival until their first token chunk
is sent on (or they end without one): queued here, or upstream before the first token. A non-streamed
request counts until its whole response, as the proxy cannot see its first token. A listener
(``on_pending``, or ``set_on_pending``) hears ``listener(count, boost_at_s)`` at every change of the
count, from the loop thread (keep it cheap): the signal of the prefill-clock governor
(``greenrl.live.governor``). ``boost_at_s`` is the earliest boost time of the requests pending their
first token (loop time = ``time.monotonic``; ``inf`` when none is pending). Each request gets its boost
time at arrival from a ``BoostPredictor`` (``greenrl.live.deadline.PrefillDeadline``, the deadline
governor) given the load the proxy sees then: the prompt tokens (and attention pairs) of the requests
awaiting their first token, here or upstream; the requests upstream past their first token and their
context (prompt + tokens streamed); whether it must wait for room under the cap. Without a predictor
every boost time is ``-inf`` (at once): the prefill clock whenever a request is pending.

The proxy runs on its own asyncio loop in a background thread: ``start()`` returns its URL, ``stop()``
ends it (open requests are cut). It binds 127.0.0.1 by default.

Modules, one job each: ``server`` (``AdmissionProxy``: loop thread, control API, the life of a request),
``admission`` (the cap, FIFO wait, hold and drain), ``forward`` (upstream client, relaying, retries),
``accounting`` (counters and SLO verdicts).

Public names: AdmissionProxy, PendingListener.
"""

from greenrl.live.proxy.server import AdmissionProxy, PendingListener

__all__ = ["AdmissionProxy", "PendingListener"]
