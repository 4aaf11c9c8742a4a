"""Every fixed bound of the gateway, named with its unit.

Configurable limits (header size, body size, timeouts, connections) live in the config model;
these are the bounds that protect the process itself and that no operator should need to tune.
Each one has a test that crosses it.
"""

import re
from typing import Final

# Downstream (client) side.
READ_BUFFER_BYTES: Final = 64 * 1024
"""One receive buffer per worker, shared by every client connection: the parser copies what it
keeps, so a buffer never outlives ``buffer_updated`` and idle connections cost no buffer."""

MAX_PIPELINED_REQUESTS: Final = 16
"""Parsed requests waiting behind the one in flight on a connection; reading pauses above it."""

BODY_BUFFER_HIGH_WATER_BYTES: Final = 256 * 1024
"""Request body held for an exchange whose upstream is not ready yet; reading pauses above it."""

MAX_TRAILER_FIELDS: Final = 32
"""Trailer fields accepted after a chunked request body (they are validated, then dropped)."""

RAW_SLACK_BYTES: Final = 4096
"""Raw bytes a partly read head or trailer section may hold beyond ``max_header_size``: the
syntax around the fields (request line, CRLFs, chunk-size lines) that exact checks don't count."""

LINGER_S: Final = 2.0
"""After a last answer sent while the client may still be sending (an unread body, a rejected
request): how long the FIN-closed connection keeps reading, and dropping, what still comes."""

# Upstream (backend) side.
MAX_IDLE_UPSTREAM_PER_INSTANCE: Final = 256
"""Idle keep-alive connections kept per backend instance and worker; extra ones are closed."""

UPSTREAM_IDLE_TIMEOUT_S: Final = 30.0
"""An idle pooled connection is closed after this, before a typical backend would drop it."""

MAX_UPSTREAM_HEAD_BYTES: Final = 64 * 1024
"""Largest response head accepted from a backend; more is a 502."""

MAX_UPSTREAM_HEADERS: Final = 200
"""Most response header fields accepted from a backend; more is a 502."""

MAX_REPLAY_BODY_BYTES: Final = 64 * 1024
"""Request body kept after sending so a retryable request can be sent again; a longer body
makes the request not retryable once its bytes reached a backend."""

MIN_FAILOVER_DEPTH: Final = 8
"""Instances of a customer's consistent-hash order kept for failover (more when retry_attempts
asks), before the overflow pool."""

HEALTH_REFRESH_INTERVAL_S: Final = 0.1
"""How often a worker re-reads the shared health table (other workers' ejections, the active
checks' verdicts) and publishes its own numbers for the admin view."""

HEALTH_CHECK_TIMEOUT_S: Final = 5.0
"""Longest an active health check may take (and never longer than the check interval)."""

# Identity.
MAX_REQUEST_ID_BYTES: Final = 128
"""A client's X-Request-ID longer than this (or with odd characters) is replaced."""

# Process model.
HEARTBEAT_INTERVAL_S: Final = 1.0
"""How often each worker's event loop proves to the master that it is not blocked."""

HEARTBEAT_TIMEOUT_S: Final = 10.0
"""A worker whose loop has not beaten for this long is killed and respawned."""

DRAIN_TIMEOUT_S: Final = 30.0
"""Default time in-flight requests get to finish on SIGTERM or reload before being cut."""

RESPAWN_BACKOFF_MAX_S: Final = 30.0
"""Upper bound of the exponential back-off between respawns of a crashing worker."""

# A customer id, whichever way it arrives (dev token, JWT claim, `fastgw token`): it becomes a
# header value and a rate-limit key, so a short, plain charset.
CUSTOMER_ID_PATTERN: Final = r"[A-Za-z0-9_.\-]{1,128}\Z"
CUSTOMER_ID: Final = re.compile(CUSTOMER_ID_PATTERN)  # for ids read as str (claims, CLI)
CUSTOMER_ID_BYTES: Final = re.compile(CUSTOMER_ID_PATTERN.encode("ascii"))  # wire and Redis

# Authentication bounds (docs/authentication.md).
MAX_HEADER_SEGMENT_BYTES: Final = 1024
"""Longest JOSE header segment read: real ones are under 300 bytes, and the header is parsed
before the signature is checked, so its size is the attacker's to choose."""
MAX_CACHED_HEADERS: Final = 64
"""Decoded JOSE headers a worker keeps (one issuer has a few: one per kid and alg)."""
MAX_DEV_CONTEXTS: Final = 10_000
"""Development-token contexts a worker keeps (beyond that they are built per request)."""

# Hot-path Redis client (fastgw/resp, docs/redis-client.md).
REDIS_MAX_PENDING_PER_CONNECTION: Final = 10_000
"""Commands sent or queued on one Redis connection and not yet answered (timed-out ones whose
late reply is still due count too); one more is refused at once with ``RedisOverloaded``.
10,000 is far above a healthy gateway's need (a worker at 50k requests/s with 50 ms deadlines
has at most 2,500 in flight) and caps the memory of a stalled server at a few MB per connection."""

REDIS_CONNECT_TIMEOUT_S: Final = 1.0
"""Deadline of opening one Redis connection: TCP/unix connect plus AUTH, SELECT and PING."""

REDIS_DEAD_PEER_MIN_S: Final = 1.0
REDIS_DEAD_PEER_TIMEOUTS: Final = 20
"""A connection with commands pending that has received no byte for
``max(REDIS_DEAD_PEER_MIN_S, REDIS_DEAD_PEER_TIMEOUTS * timeout_s)`` is closed and reopened: the
peer is gone (a silent network drop), or stalled for far longer than any deadline."""

REDIS_RECONNECT_BACKOFF_MIN_S: Final = 0.05
REDIS_RECONNECT_BACKOFF_MAX_S: Final = 2.0
"""Pause before reconnecting a lost or failed Redis connection: doubling from MIN to MAX, each
pause drawn in [pause/2, pause] (jitter, so workers do not reconnect in lock step)."""

REDIS_CLUSTER_MAX_REDIRECTS: Final = 3
"""``-MOVED``/``-ASK`` redirects one command may follow; the next one is its error reply."""

REDIS_CLUSTER_REFRESH_INTERVAL_S: Final = 0.1
"""Least time between two Cluster slot-map refreshes (``CLUSTER SLOTS``); one at most in flight."""

REDIS_CLUSTER_MAX_NODES: Final = 1000
"""Cluster nodes a client keeps connections to (the Redis Cluster spec's size limit); a
redirect to a node beyond it fails with ``RedisUnavailable``."""

REDIS_CLOSE_TIMEOUT_S: Final = 1.0
"""How long ``aclose()`` waits for the transports it aborted to report ``connection_lost``."""

# Rate limiting (docs/ratelimiting.md).

MAX_ENCODED_CUSTOMERS: Final = 4096
"""Customers whose Redis command parts a worker keeps encoded (the set is emptied when full and
refilled by the next requests): a few hundred bytes each."""

REDIS_LIMITS_START_WAIT_S: Final = 2.0
"""How long a booting worker waits for Redis before serving anyway (``on_failure`` covers the
requests until the client reconnects in the background)."""

# Routing (fastgw/routing).

MAX_CACHED_ROUTES: Final = 65_536
"""Customers whose consistent-hash failover order a worker keeps per candidate group (emptied
when full and refilled by the next requests): a small tuple each."""

# Logging and health probes (fastgw/obs, docs/observability.md).

LOG_REOPEN_CHECK_INTERVAL_S: Final = 1.0
"""A file log output is checked for rotation (its path names another file, or none) at most this
often, before a write, in every process: lines written meanwhile go to the renamed file."""

LOG_WRITE_BLOCKED_WAIT_S: Final = 1.0
"""Longest wait for a log output that refuses writes (a non-blocking stdio pipe that is full);
after it the line is dropped rather than the process stalled."""

ACCESS_LOG_MAX_PENDING_LINES: Final = 16_384
"""Access-log lines a worker holds for its writer thread; beyond it lines are dropped and
counted (a warning says how many), so a stalled output never grows the worker's memory."""

ACCESS_LOG_FLUSH_INTERVAL_S: Final = 0.05
"""How often the access-log writer thread writes what the event loop queued (one write(2) per
batch): the delay of a line, and the wake-ups of an idle worker (20 per second)."""

ACCESS_LOG_STOP_TIMEOUT_S: Final = 2.0
"""How long closing the access log waits for its writer thread to write the last lines."""

REDIS_PROBE_INTERVAL_S: Final = 1.0
"""Between two PINGs of a worker's Redis probe (/health/detailed, /ready): the staleness of what
they report, and all the traffic a load balancer polling them causes in Redis."""

LOOP_LAG_INTERVAL_S: Final = 1.0
"""Between two measurements of how late the event loop runs a timer (/health/detailed)."""

LOOP_LAG_DEGRADED_S: Final = 0.1
"""A timer run this late means the loop is overloaded or blocked: http_server is degraded."""

# Tracing (fastgw/obs/tracing*.py, otlp.py; docs/observability.md "Tracing").

TRACE_QUEUE_SPANS: Final = 4096
"""Finished spans a worker holds for its export thread (the SDK batch processor's queue, about
1 KB each). A traced request whose spans do not all fit is dropped whole and counted: an
unreachable or slow collector costs memory up to this bound, never time on the request path."""

TRACE_BATCH_SPANS: Final = 512
"""Spans per OTLP/HTTP POST; the export thread also wakes as soon as this many are queued."""

TRACE_SCHEDULE_DELAY_S: Final = 1.0
"""Longest a finished span waits in the queue before the export thread sends what it has."""

TRACE_EXPORT_TIMEOUT_S: Final = 10.0
"""Longest one batch's export may take, retries and back-off included (on the export thread)."""

TRACE_FLUSH_TIMEOUT_S: Final = 2.0
"""At worker exit, how long the spans still queued may take to reach the collector (one try
each, no retry); the rest are lost. Bounds how much tracing adds to a drain."""

TRACE_LOG_INTERVAL_S: Final = 60.0
"""Export failures are logged at most once per this interval per worker, with a count."""

TRACE_PARENT_SAMPLED_PER_S: Final = 100.0
"""Requests a worker records per second because the client's ``traceparent`` says sampled (a
token bucket holding as many). A client cannot make the gateway record and export more than
this, whatever ``sample_rate`` says: at ~15 CPU-µs a traced request, 1.5 ms of CPU a second per
worker at most. Past it the client's trace headers pass through unchanged (tracing/Sampling)."""

TRACEPARENT_PASS_MAX_BYTES: Final = 512
"""Longest client ``traceparent`` (a later version's, with fields appended) passed on as it
came when the gateway does not re-parent the trace; a longer one goes on as version 00."""

TRACESTATE_MAX_MEMBERS: Final = 32
"""List-members of a ``tracestate`` forwarded (W3C's maximum); more are truncated (below)."""

TRACESTATE_MAX_BYTES: Final = 512
"""Bytes of a ``tracestate`` forwarded (what W3C says a vendor should propagate at least); a
longer one is truncated by W3C's rule: whole entries, those over
``TRACESTATE_MEMBER_MAX_BYTES`` first, then entries from the end."""

TRACESTATE_MEMBER_MAX_BYTES: Final = 128
"""A ``tracestate`` entry longer than this goes first when one must be truncated (W3C)."""

UPSTREAM_ERROR_LOG_INTERVAL_S: Final = 1.0
"""At most one "upstream failed" line per worker per this interval; the next one says how many
were held back (fastgw/obs/logging_errors.py)."""
