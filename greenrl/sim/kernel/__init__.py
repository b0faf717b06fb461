"""Compiled core of the serving simulator: vLLM V1 scheduling on every replica of a node (numba).

State lives in plain numpy arrays (so ``SimNode.fork`` is a copy) indexed by the constants below.
One call of ``run_until`` advances the whole node to ``t_end``:

* arrivals are routed, in time order, to the serving replica with the fewest outstanding requests
  (the router cannot see output lengths); with no replica serving they wait in a node-level queue;
* each replica schedules like vLLM V1: running requests first (a decode token each, or the next
  prefill chunk), then waiting requests FCFS while a seat (``running < max_num_seqs``), token budget
  (``max_num_batched_tokens``) and KV blocks are free; when KV blocks run out the newest running
  request is preempted, its blocks freed, and it is recomputed later from the front of the queue;
* an iteration's latency and power come from ``step_scalar``, the compiled twin of
  ``greenrl.surrogate.model.step`` (a parity test keeps them equal);
* with a prefill clock (``cfg[C_PREFILL_CLOCK_FRAC] > 0``) a replica runs at that clock while any of its
  requests waits or prefills and at the base clock otherwise. A switch up is asked for when the
  first such request reaches the replica (a governor watching the front end sees the arrival), a
  switch down at the first iteration with none; each takes effect ``cfg[C_SWITCH_S]`` later, also in
  the middle of an iteration (the GPU changes clock under a running kernel), whose remaining work then
  runs at the new clock. With a TTFT target (``cfg[C_BOOST_TTFT_S] >= 0``, the deadline governor) each
  request gets a boost time when it reaches the replica (``_boost_at``) and the switch up is asked for
  at the earliest boost time of the pending requests instead;
* ``fast`` mode jumps over runs of pure-decode iterations whose batch does not change (no arrival,
  admission, prefill chunk, completion or KV-block shortage in between): their latency is exactly
  linear in the step index, so time and energy are summed in closed form.

An iteration is accounted when it starts (its tokens carry its end time), so a request can show as
finished up to one iteration before its finish time. Idle replicas draw idle power; loading ones
``reload_power``.

Modules, one job each: ``layout`` (the array columns and codes, compile-time constants), ``step``
(``step_scalar``), ``queues`` (the linked-list request queues), ``governor`` (the prefill clock and
the deadline governor), ``scheduler`` (one replica's iteration), ``loop`` (``run_until``: arrivals,
routing, replica events, idle energy). numba's cache keys each function on its own source file only;
``_cache`` makes every function here depend on all of them, so editing one module recompiles the
functions that inline it.

Public names: step_scalar, base_clock_prefill_s, run_until, push_pending, finish_interval, plus the
column constants of ``layout``. The private helpers the tests call (``_boost_at``, ``_replica_clock``,
``_account_idle``, ``_push_back``, ``_pop_front``) are re-exported too.
"""

# first: its import puts the cache locators in place before any module below compiles
from greenrl.sim.kernel import _cache as _cache
from greenrl.sim.kernel.governor import _boost_at as _boost_at
from greenrl.sim.kernel.governor import _replica_clock as _replica_clock
from greenrl.sim.kernel.governor import base_clock_prefill_s
from greenrl.sim.kernel.layout import *  # noqa: F403 - the column constants, as K.RF_ARRIVAL etc.
from greenrl.sim.kernel.loop import _account_idle as _account_idle
from greenrl.sim.kernel.loop import finish_interval, run_until
from greenrl.sim.kernel.queues import _pop_front as _pop_front
from greenrl.sim.kernel.queues import _push_back as _push_back
from greenrl.sim.kernel.queues import push_pending
from greenrl.sim.kernel.step import step_scalar

__all__ = ["base_clock_prefill_s", "finish_interval", "push_pending", "run_until", "step_scalar"]
