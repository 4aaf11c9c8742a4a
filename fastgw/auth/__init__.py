"""Bearer-token authentication: from a request's token to a customer context.

Modules, each with one job:

- ``errors``: ``TokenError``, the one exception every refusal becomes (a 401).
- ``jws``: compact JWS parsing (segments, strict base64url, JSON) with no signature work.
- ``keyring``: verification keys (PEM, JWKS, HMAC secret), one algorithm per key, and the
  per-algorithm signature checks done with ``cryptography``.
- ``refresh``: background reload of a JWKS file or URL; rotation without a failing window.
- ``claims``: the registered-claim checks (exp, nbf, iat, iss, aud, required claims).
- ``context``: the customer context built from verified claims, with its backend header block.
- ``verifier``: the whole uncached verification, parse → key → signature → claims → context.
- ``cache``: the per-worker verified-token cache (bounded LRU, never past exp or cache_ttl).
- ``sources``: where a token is read from (Bearer header, query parameter, cookie).
- ``revocation``: the revocation list kept in Redis and mirrored in every worker.
"""
