"""Uncached JWT verification: CPU time per token, fastgw's verifier beside ``jwt.decode``.

For each algorithm one token is minted (the claims ``fastgw token`` writes) and verified over
and over -- the verifier keeps nothing between calls, so every call is a full verification:
split, strict base64url, header JSON, key lookup, signature, payload JSON, registered claims,
customer context. Three figures per algorithm, CPU-µs per token (``time.process_time_ns``),
the median of ``--repeats`` runs of ``--tokens`` calls:

- ``fastgw``: ``TokenVerifier.verify`` (what a cache miss costs the auth stage);
- ``pyjwt``: ``jwt.decode`` with the same key, algorithm and required claims;
- ``signature``: the bare signature check of our key (``VerifyKey.verify``), the floor.

Run: ``python -m bench.micro_jwt [--tokens 2000] [--repeats 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization

from fastgw.auth import jws
from fastgw.auth.keyring import KeyRing, ring_from_pem, ring_from_secret
from fastgw.auth.verifier import TokenVerifier
from fastgw.config.gateway import JwtConfig
from fastgw.keys import generate_private_key

ALGORITHMS: Final = ("RS256", "PS256", "ES256", "EdDSA", "HS256")
HS_SECRET: Final = b"bench-secret-bench-secret-bench-secret!!"
TIERS: Final = frozenset({"free", "pro", "enterprise"})


@dataclass
class _Keys:
    ring: KeyRing

    def unknown_kid(self, kid: str | None) -> None:
        raise AssertionError(f"bench token names an unknown kid {kid!r}")


@dataclass(frozen=True)
class Subject:
    """One algorithm's token and the three ways of checking it."""

    algorithm: str
    token: bytes
    fastgw: Callable[[], object]
    pyjwt: Callable[[], object]
    signature: Callable[[], object]


def subject(algorithm: str) -> Subject:
    now = int(time.time())
    claims = {
        "customer_id": "acme-42",
        "tier": "pro",
        "permissions": ["vm:create", "vm:read", "vm:delete"],
        "pool": "pool_a",
        "iat": now,
        "exp": now + 86_400,
        "jti": "6b1f8f8e0c4a4d1f9e1a3b5c7d9e0f12",
    }
    verify_with: Any
    if algorithm == "HS256":
        ring = ring_from_secret(HS_SECRET, (algorithm,))
        token = jwt.encode(claims, HS_SECRET, algorithm=algorithm).encode("ascii")
        verify_with = HS_SECRET
    else:
        private = generate_private_key("RS256" if algorithm.startswith("PS") else algorithm)
        public = private.public_key()
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ring = ring_from_pem(pem, (algorithm,))
        token = jwt.encode(claims, private, algorithm=algorithm).encode("ascii")
        verify_with = public
    config = JwtConfig(algorithms=(algorithm,))
    verifier = TokenVerifier(config, _Keys(ring), TIERS, "free")
    text = token.decode("ascii")
    options = {"require": list(config.effective_required_claims)}
    parts = jws.split(token, {})
    key = ring.find(parts.kid)
    assert key is not None
    return Subject(
        algorithm,
        token,
        fastgw=lambda: verifier.verify(token),
        pyjwt=lambda: jwt.decode(text, verify_with, algorithms=[algorithm], options=options),
        signature=lambda: key.verify(parts.signing_input, parts.signature),
    )


def cpu_us_per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the CPU time of ``calls`` calls, per call, in µs."""
    fn()  # warm: first-call caches (key objects, JSON decoder) are not what we measure
    runs = []
    for _ in range(repeats):
        start = time.process_time_ns()
        for _ in range(calls):
            fn()
        runs.append((time.process_time_ns() - start) / calls / 1000)
    return statistics.median(runs)


def measure(calls: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for algorithm in ALGORITHMS:
        s = subject(algorithm)
        assert s.fastgw() is not None and s.signature() is True
        row: dict[str, Any] = {"algorithm": algorithm, "token_bytes": len(s.token)}
        for name in ("fastgw", "pyjwt", "signature"):
            row[f"{name}_us"] = round(cpu_us_per_call(getattr(s, name), calls, repeats), 2)
        row["fastgw_over_signature_us"] = round(row["fastgw_us"] - row["signature_us"], 2)
        row["pyjwt_over_fastgw"] = round(row["pyjwt_us"] / row["fastgw_us"], 2)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| algorithm | token B | fastgw µs | pyjwt µs | signature µs | fastgw - signature µs "
        "| pyjwt / fastgw |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['algorithm']} | {r['token_bytes']} | {r['fastgw_us']:.1f} | {r['pyjwt_us']:.1f} "
        f"| {r['signature_us']:.1f} | {r['fastgw_over_signature_us']:.1f} "
        f"| {r['pyjwt_over_fastgw']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_jwt", description=__doc__)
    parser.add_argument("--tokens", type=int, default=2000, help="calls per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is kept")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be at least 1")
    rows = measure(args.tokens, args.repeats)
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
