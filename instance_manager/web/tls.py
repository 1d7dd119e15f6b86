"""TLS on the status port: TLS 1.3 minimum, client certificate requested but optional.

**Optional, unverified client certificates.** CNPG's operator presents a self-signed
certificate that no CA vouches for: trust comes from its pinned public key (web/auth.py), so
the handshake must accept any certificate or none (Go's ``tls.RequestClientCert``).
Python's ``ssl`` verifies any certificate a client sends under ``CERT_OPTIONAL`` and aborts
the handshake when it does not chain to a loaded CA, and it has no verify callback. We
install one that accepts every certificate, with ``SSL_CTX_set_verify`` from the libssl
the ``_ssl`` module is linked against (the same library mapped in this process), after
checking that the ``SSL_CTX`` pointer read from the context object is the right one. If that
is not possible, no client certificate is requested and every protected endpoint answers
401, which fails closed.

**Reloading without dropping the listener.** Each handshake switches, from the SNI callback
(called for every ClientHello, with or without a server name), to the newest context;
a new pair of files is loaded into a fresh context first, so a half-written pair never
replaces a working one.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import ssl
from pathlib import Path

from instance_manager import log

_logger = log.get("web")
SSL_VERIFY_PEER = 0x01
# watchfiles: wait this long for a burst of changes to settle (ms), wake up this often (ms).
WATCH_DEBOUNCE_MS = 200
WATCH_STEP_MS = 1000

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(_preverify_ok: int, _store: int | None) -> int:
    return 1


# Kept for the process' lifetime: OpenSSL holds a raw pointer to it.
ACCEPT_ANY_CERTIFICATE = _VerifyCallback(_accept_any)


class TLSUnavailable(Exception):
    """Optional client certificates cannot be requested with this Python/OpenSSL."""


def _libssl() -> ctypes.CDLL:
    """The libssl mapped in this process (the one ``_ssl`` uses)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError as exc:
        raise TLSUnavailable(f"cannot read /proc/self/maps: {exc}") from exc
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/libssl.so" in path:
            return ctypes.CDLL(path)
    raise TLSUnavailable("libssl is not a shared library in this process")


def _ssl_ctx_pointer(context: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    """The SSL_CTX* inside ``context`` (first field after the object header), checked."""
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise TLSUnavailable("no SSL_CTX in the context object")
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    if lib.SSL_CTX_get_options(pointer) != int(context.options) or lib.SSL_CTX_get_verify_mode(
        pointer
    ) != int(context.verify_mode):
        raise TLSUnavailable("the SSL_CTX layout is not the expected one")
    return pointer


def request_any_client_certificate(context: ssl.SSLContext) -> None:
    """Ask for a client certificate, accept any or none (Go's RequestClientCert)."""
    context.verify_mode = ssl.CERT_OPTIONAL
    lib = _libssl()
    pointer = _ssl_ctx_pointer(context, lib)
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_set_verify(pointer, SSL_VERIFY_PEER, ACCEPT_ANY_CERTIFICATE)


def server_context(certificate: Path, key: Path, client_certificates: bool) -> ssl.SSLContext:
    """A TLS 1.3 server context; raises ssl.SSLError/OSError on a bad pair of files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(certificate), str(key))
    if client_certificates:
        request_any_client_certificate(context)
    return context


def _digest(*paths: Path) -> bytes:
    h = hashlib.sha256()
    for path in paths:
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"\0missing")
    return h.digest()


class ServerTLS:
    """The listener's context and the reloading of its certificate."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.certificate = certificate
        self.key = key
        self.client_certificates = True
        self.listener: ssl.SSLContext | None = None
        self.current: ssl.SSLContext | None = None
        self.reloads = 0
        self._digest = b""

    def _build(self) -> ssl.SSLContext:
        try:
            return server_context(self.certificate, self.key, self.client_certificates)
        except TLSUnavailable as exc:
            log.event(
                _logger,
                "cannot request optional client certificates: operator endpoints will answer 401",
                logging.ERROR,
                error=str(exc),
            )
            self.client_certificates = False
            return server_context(self.certificate, self.key, False)

    async def start(self) -> ssl.SSLContext:
        """Load the files (raises when they are unusable) and return the listener context."""
        self._digest = await asyncio.to_thread(_digest, self.certificate, self.key)
        context = await asyncio.to_thread(self._build)
        context.sni_callback = self._switch
        self.listener = self.current = context
        return context

    def _switch(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        current = self.current
        if current is not None and connection.context is not current:
            connection.context = current

    async def reload(self) -> bool:
        """Load the files again if they changed; keep the old context when they are unusable."""
        digest = await asyncio.to_thread(_digest, self.certificate, self.key)
        if digest == self._digest:
            return False
        try:
            context = await asyncio.to_thread(self._build)
        except (ssl.SSLError, OSError) as exc:
            log.event(
                _logger,
                "new server certificate not loaded; keeping the current one",
                logging.WARNING,
                error=str(exc),
            )
            return False
        self._digest = digest
        self.current = context
        self.reloads += 1
        log.event(_logger, "server certificate reloaded", certificate=str(self.certificate))
        return True

    async def watch(self) -> None:
        """Reload whenever a file in the certificates' directories changes, until cancelled."""
        from watchfiles import awatch

        folders = sorted({str(self.certificate.parent), str(self.key.parent)})
        async for _ in awatch(
            *folders, debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS, recursive=False
        ):
            await self.reload()
