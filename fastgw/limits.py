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
