"""Rate limiting: every level of a request decided at once (ARCHITECTURE A2, A3, B4).

- ``decision``: the request and decision types every backend shares, and the decoder of the
  scripts' reply.
- ``model``: the pure-Python reference of the Redis scripts (an injected clock, same inputs →
  same decision); the spec the scripts are tested against.
- ``script``: the Redis scripts (``customer.lua``: every level of one customer, atomically;
  ``global.lua``: the global level, on its own key), their SHA1s, the KEYS/ARGV layout, and
  ``evalsha_or_load`` for redis-py sync clients.
"""
