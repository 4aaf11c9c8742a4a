"""Rate limiting: every level of a request decided at once (ARCHITECTURE A2, A3, B4).

- ``decision``: the request and decision types every backend shares, and the decoder of the
  scripts' reply.
- ``model``: the pure-Python reference of the Redis scripts (an injected clock, same inputs →
  same decision); the spec the scripts are tested against.
- ``script``: the Redis scripts (``customer.lua``: every level of one customer, atomically,
  and the global level too on a standalone Redis; ``global.lua``: the global level on its own
  key; ``bucket.lua`` and ``window.lua`` included by both), their SHA1s, the KEYS/ARGV layout,
  and ``evalsha_or_load`` for redis-py sync clients.
- ``policy``: config → the numbers of a decision; ``limiter``: the memory decision, the
  concurrency cap, and what a decision does to the exchange; ``redis_backend``: the Redis
  decision; ``shared``: the shared-memory table file; ``service``: one plan's assembly.
"""
