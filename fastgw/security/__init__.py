"""Client-facing security (``gateway.security``, ARCHITECTURE A2): IP allow/deny rules and
trusted-proxy resolution of X-Forwarded-For (``ipset``)."""
