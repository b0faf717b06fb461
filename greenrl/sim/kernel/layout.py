"""Array layout of the simulator's compiled core: the column, state, config and counter indices.

All state lives in plain numpy arrays (so ``SimNode.fork`` is a copy); these integer constants name
their columns. They are module globals, which numba freezes as compile-time constants into every
function that reads them.

Arrays and their columns:

* ``packed`` (one row per TP degree): the surrogate's parameters, ``P_*``
  (``greenrl.surrogate.model.PACKED_FIELDS`` order);
* ``req_f`` / ``req_i`` (one row per request): float columns ``RF_*``, int columns ``RI_*``; a
  request's ``RI_STATE`` is one of ``FUTURE``, ``WAITING``, ``RUNNING``, ``FINISHED``, ``REJECTED``;
* ``slot_i`` / ``slot_f`` (one row per replica slot): int columns ``SI_*``, float columns ``SF_*``; a
  slot's ``SI_STATUS`` is one of ``OFF``, ``SERVING``, ``DRAINING``, ``LOADING``;
* ``g``: node-level int state ``G_*`` (the arrival cursor and the node queue);
* ``cfg``: the configuration ``C_*``;
* ``cnt``: the interval counters ``K_*``.

``DONE`` and ``SLOT_DRAINED`` are the return codes of ``run_until``.
"""

# packed surrogate parameters (greenrl.surrogate.model.PACKED_FIELDS)
P_TP, P_LAYERS, P_FLOPS_TOK, P_LMHEAD, P_DENSE_W, P_EXPERT_W, P_EXPERTS, P_TOPK = 0, 1, 2, 3, 4, 5, 6, 7
P_KV_TOK, P_ATTN_PAIR, P_ACT_TOK, P_AR_TOK, P_LIN_PEAK, P_ATTN_PEAK, P_MEM_BW, P_AR_BW = 8, 9, 10, 11, 12, 13, 14, 15
P_IDLE_W, P_TDP_W, P_MIN_CLOCK, P_SHARP, P_ACT_TRAFFIC = 16, 17, 18, 19, 20
P_EFF_C, P_EFF_M, P_ITER_OVH, P_LAYER_OVH, P_SEQ_OVH, P_WORKER_OVH, P_AR_LAT = 21, 22, 23, 24, 25, 26, 27
P_BUSY_W, P_COMP_W, P_MEM_W = 28, 29, 30
P_OVERLAP = 31  # physics 3's host_overlap_frac; 0 in physics 1 and 2 files (additive host time)
N_PACKED = 32

# request float columns
RF_ARRIVAL, RF_FIRST_TOKEN, RF_FINISH, RF_LAST_TOKEN, RF_TBT_SUM, RF_TBT_MAX, RF_ADMIT, RF_TTFT_SLO = range(8)
RF_BOOST_AT = 8  # deadline governor: when this request needs the prefill clock (s), set when it reaches a replica
N_RF = 9
# request int columns
RI_PROMPT, RI_OUTPUT, RI_STATE, RI_SLOT, RI_CTX, RI_GENERATED, RI_PREEMPT, RI_BLOCKS, RI_NEXT, RI_PHASE = range(10)
N_RI = 10
# request states
FUTURE, WAITING, RUNNING, FINISHED, REJECTED = 0, 1, 2, 3, 4
# slot int columns
SI_STATUS, SI_NRUN, SI_QHEAD, SI_QTAIL, SI_QLEN, SI_OUTSTANDING, SI_FREE_BLOCKS, SI_TOTAL_BLOCKS, SI_TP_IDX = range(9)
N_SI = 9
# slot status
OFF, SERVING, DRAINING, LOADING = 0, 1, 2, 3
# slot float columns
SF_BUSY_UNTIL, SF_ACCOUNTED_TO, SF_READY_AT, SF_ENERGY_J, SF_BUSY_S, SF_RELOAD_W = range(6)
SF_CLOCK_NOW, SF_CLOCK_TARGET, SF_CLOCK_AT = 6, 7, 8  # the replica's clock under a prefill clock (fractions, s)
SF_PENDING_SINCE = 9  # when a request first waited or prefilled since the replica last had none (s; -1: none)
SF_IDLE_W, SF_OFF_W = 10, 11  # the replica's GPUs' power between iterations (loaded, idle) and when OFF (W)
N_SF = 12
# node int state
G_NEXT_ARRIVAL, G_PHEAD, G_PTAIL, G_PLEN = range(4)
N_G = 4
# config
C_CLOCK_FRAC, C_MAX_SEQS, C_MAX_BATCHED, C_BLOCK, C_TBT_SLO, C_PREFILL_CLOCK_FRAC, C_SWITCH_S = range(7)
C_BOOST_TTFT_S = 7  # < 0: the prefill clock whenever a request is pending; else the deadline governor's TTFT target (s)
C_MAX_MODEL_LEN = 8  # vLLM's --max-model-len (tokens): a longer prompt + output is rejected at arrival; <= 0: none
N_C = 9
# interval counters
K_ARRIVED, K_PROMPT_IN, K_TOKENS_OUT, K_PREFILL_TOKENS, K_FINISHED, K_SLO_MET, K_PREEMPTIONS = range(7)
K_ITERATIONS, K_TTFT_SUM, K_TBT_SUM, K_REJECTED, K_FIRST_TOKENS, K_SCHEDULES = 7, 8, 9, 10, 11, 12
K_PREFILL_CLOCK_S, K_BUSY_S = 13, 14  # busy replica-seconds at the prefill clock, and in all
N_K = 15
# return codes of run_until
DONE, SLOT_DRAINED = 0, 1
