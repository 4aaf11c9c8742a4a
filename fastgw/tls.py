"""TLS termination on the main port: the server ``SSLContext``, its checks, and HSTS.

What the context is, and why:

- ``PROTOCOL_TLS_SERVER`` with ``minimum_version = TLSv1_2``: TLS 1.2 and 1.3 only (1.0 and 1.1
  are deprecated by RFC 8996). The maximum is left open, so TLS 1.3 is used when the client has
  it.
- **Ciphers: Python's defaults, on purpose.** They are forward-secret only (ECDHE/DHE), with no
  RC4, 3DES, NULL, export or SHA-1 MAC suites, at OpenSSL security level 2, and TLS 1.3 suites
  are OpenSSL's (AES-GCM, ChaCha20-Poly1305). Python tightens them with each release; a list
  of our own would freeze today's choice. The TLS 1.2 CBC-SHA2 suites they still allow are
  kept for old clients (OpenSSL's CBC code is constant-time).
- **Options:** no compression (CRIME), the server's cipher order (both Python's defaults, set
  again so they do not depend on them) and no renegotiation (``OP_NO_RENEGOTIATION``:
  client-initiated renegotiation is a cheap way to make the server do handshakes, and HTTP/1.1
  never needs it).
- **ALPN ``http/1.1`` only:** a client offering ``h2`` falls back to HTTP/1.1 instead of
  speaking HTTP/2 to a parser that only reads HTTP/1.x; a client that offers no protocol we
  speak gets no ALPN answer and may go on with HTTP/1.1 (OpenSSL's behaviour when the
  selection callback finds no overlap), which is what we serve.
- **An encrypted private key is refused,** never prompted for: without a password callback
  OpenSSL would ask on the terminal, and the master must never block on a prompt.
- **Session tickets** stay on (OpenSSL's default, two per TLS 1.3 handshake). Each worker
  builds its own context, so its ticket key is its own: a ticket resumes on the worker that
  issued it and elsewhere falls back to a full handshake (correct, just slower), and a reload
  (new workers) retires every ticket.

Certificate reload is the generation reload: every worker builds its context once in
``GatewayServer.start``, so SIGHUP (a new generation of workers) reads the certificate and key
files again. The master first loads the pair itself (``check_tls`` from ``check_plan``), so a
bad pair is refused (``reload rejected: ...``) while the old generation keeps serving; config
validation (``check-config``) runs the same load through :func:`tls_problems`.

How uvloop's SSL transport (``uvloop/sslproto.pyx``, 0.23) meets ``DownstreamProtocol``:

- ``BufferedProtocol`` is supported: after decrypting, uvloop calls ``get_buffer(pending +
  256)`` and fills what we return (the worker's shared 64 KiB buffer) with one or more
  ``SSLObject.read`` calls, then ``buffer_updated(n)`` once. When our buffer is full it calls
  ``get_buffer`` again on a later loop turn. We consume the buffer inside ``buffer_updated``,
  so sharing it between connections stays safe (tested: concurrent uploads on many
  connections). ``connection_made`` comes only after the handshake, so a handshaking
  connection is neither counted by ``max_connections`` nor seen by ``drain()``. The handshake
  timeout is what bounds it.
- ``pause_reading`` stops deliveries to us, but uvloop keeps reading the socket into its
  incoming memory BIO up to 256 KiB per connection before it stops reading the socket.
- ``can_write_eof()`` is False, so there is no FIN-then-linger. Instead ``close()`` starts a
  TLS shutdown that reads and drops whatever the client still sends, and the answer gets out
  (a 413 during an upload arrives). The shutdown then waits for the client's close_notify or
  EOF, up to ``ssl_shutdown_timeout``.
- Each element given to ``writelines`` becomes its own TLS record (22 bytes of overhead each
  in TLS 1.3, and one AEAD seal each).

HSTS (RFC 6797) is only meaningful over TLS: a browser ignores it on plain HTTP, and sending it
there would only advertise a promise the port does not keep. :func:`hsts_field` is empty
unless TLS and ``gateway.security.hsts`` are both on.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, TypedDict

from fastgw.errors import BootError, ConfigError, Problem

if TYPE_CHECKING:
    from fastgw.config.gateway import GatewayConfig, ServerConfig, TlsConfig

ALPN_PROTOCOLS: Final = ("http/1.1",)
TLS_PATH: Final = "$.gateway.server.tls"
HSTS_NAME: Final = "strict-transport-security"


class TlsFileError(Exception):
    """The certificate or key cannot be used; ``key`` names the config field to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class _EncryptedKey(Exception):
    """Raised from the password callback: OpenSSL found an encrypted private key."""


def _no_password() -> bytes:
    raise _EncryptedKey


class ListenTls(TypedDict, total=False):
    """The TLS keyword arguments of ``loop.create_server`` (empty when TLS is off)."""

    ssl: ssl.SSLContext
    ssl_handshake_timeout: float
    ssl_shutdown_timeout: float


def build_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server context for this pair; :class:`TlsFileError` says what is wrong with it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # OpenSSL >= 1.1.0h
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    _load_pair(context, cert_file, key_file)
    return context


def _load_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    # OpenSSL's own errors do not say which file failed ("[SSL] PEM lib", a bare ENOENT), so
    # each file is read first and a failed load is diagnosed.
    for key, file in (("cert_file", cert_file), ("key_file", key_file)):
        try:
            with open(file, "rb") as stream:
                stream.read(1)
        except OSError as error:
            raise TlsFileError(key, f"cannot read {file}: {error.strerror or error}") from None
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKey:
        raise TlsFileError(
            "key_file",
            f"{key_file}: the private key is encrypted (an unencrypted PEM key is needed)",
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(
                "key_file",
                f"the private key in {key_file} does not match the certificate in {cert_file}",
            ) from None
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            probe.load_verify_locations(cafile=cert_file)
        except ssl.SSLError:
            raise TlsFileError("cert_file", f"no PEM certificate in {cert_file}") from None
        raise TlsFileError(
            "key_file", f"no usable PEM private key in {key_file} ({error.reason or error})"
        ) from None
    except OSError as error:  # the file went away between the two reads
        raise TlsFileError(
            "cert_file", f"cannot load {cert_file}: {error.strerror or error}"
        ) from None


def _files(tls: TlsConfig) -> tuple[str, str]:
    if tls.cert_file is None or tls.key_file is None:
        raise TlsFileError(
            "cert_file" if tls.cert_file is None else "key_file",
            "required when tls.enabled is true",
        )
    return tls.cert_file, tls.key_file


def server_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The main port's context (None when TLS is off); a worker's boot error when the files
    cannot be used."""
    if not tls.enabled:
        return None
    try:
        return build_context(*_files(tls))
    except TlsFileError as error:
        raise BootError(f"{TLS_PATH[2:]}.{error.key}: {error.message}") from None


def listen_options(server: ServerConfig) -> ListenTls:
    """``create_server`` keyword arguments: the context and its bounds, or nothing.

    The handshake gets the header timeout: until it completes no request can begin, and a
    client that connects and says nothing is cut off as it would be on plain HTTP (uvloop's
    default is 60 s). The TLS shutdown after ``close()`` (flush what is buffered, send
    close_notify, wait for the client's) gets the write timeout: it is mostly the last
    response still being read by the client, which the write timeout bounds on plain HTTP too.
    uvloop has one timer for both phases, so a shorter one would cut slow final responses.
    The cost: an idle connection closed by us (idle timeout, drain) whose client does not
    answer close_notify stays open until that timer ends, and so does a draining worker.
    """
    context = server_context(server.tls)
    if context is None:
        return {}
    return {
        "ssl": context,
        "ssl_handshake_timeout": server.timeouts.header_s,
        "ssl_shutdown_timeout": server.timeouts.write_s,
    }


def tls_problems(tls: TlsConfig) -> list[Problem]:
    """Config validation: whether the enabled pair loads (file presence is checked before)."""
    if not tls.enabled:
        return []
    try:
        build_context(*_files(tls))
    except TlsFileError as error:
        return [Problem(f"{TLS_PATH}.{error.key}", error.message)]
    return []


def check_tls(tls: TlsConfig) -> None:
    """The master's check before it forks a generation: :class:`ConfigError` if the pair does
    not load now (a file replaced since the config was validated, or before a reload)."""
    problems = tls_problems(tls)
    if problems:
        raise ConfigError(problems)


def hsts_field(gateway: GatewayConfig) -> bytes:
    """``Strict-Transport-Security: max-age=N[; includeSubDomains]\\r\\n`` for every response,
    or ``b""``: HSTS is off, TLS is off, or ``security.response_headers`` sets the header
    itself (the operator's value wins; two would be sent otherwise)."""
    hsts = gateway.security.hsts
    if not (gateway.server.tls.enabled and hsts.enabled):
        return b""
    if _names_hsts(gateway.security.response_headers):
        return b""
    value = b"max-age=%d" % int(hsts.max_age_s)
    if hsts.include_subdomains:
        value += b"; includeSubDomains"
    return b"Strict-Transport-Security: " + value + b"\r\n"


def _names_hsts(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == HSTS_NAME for name in headers)
