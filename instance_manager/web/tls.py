"""TLS on the status port: TLS 1.3 minimum, client certificate requested but optional.

**Optional, unverified client certificates.** CNPG's operator presents a self-signed
certificate that no CA vouches for: trust comes from its pinned public key (web/auth.py), so
the handshake must accept any certificate or none (Go's ``tls.RequestClientCert``).
Python's ``ssl`` verifies any certificate a client sends under ``CERT_OPTIONAL`` and aborts
the handshake when it does not chain to a loaded CA, and it has no verify callback. We
install one that accepts every certificate, with ``SSL_CTX_set_verify`` looked up through
the ``_ssl`` module's own shared object: ``dlsym`` on its handle searches that object and
the libraries it was linked against, so this is the libssl ``_ssl`` calls even when another
copy of OpenSSL is mapped in the process (psycopg's wheel brings one). A ``_ssl`` built into
the interpreter is searched through the program itself. The runtime version and the
``SSL_CTX`` pointer read from the context object are checked before anything is written.
If any of this is not possible, client certificates cannot be requested: with
``instance.statusPortTLS`` the daemon refuses to start (:func:`check_client_certificates`,
exit 2), since the operator could never authenticate.

**Reloading without dropping the listener.** Each handshake switches, from the SNI callback
(called for every ClientHello, with or without a server name), to the newest context;
a new pair of files is loaded into a fresh context first, so a half-written pair never
replaces a working one.
"""

from __future__ import annotations

import _ssl
import asyncio
import ctypes
import functools
import hashlib
import logging
import ssl
from pathlib import Path

from instance_manager import log
from instance_manager.errors import SettingsError

_logger = log.get("web")
SSL_VERIFY_PEER = 0x01
# watchfiles: wait this long for a burst of changes to settle (ms), wake up this often (ms).
WATCH_DEBOUNCE_MS = 200
WATCH_STEP_MS = 1000
FILES_RECHECK = 0.2  # seconds between two looks for certificate files not written yet

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(_preverify_ok: int, _store: int | None) -> int:
    return 1


# Kept for the process' lifetime: OpenSSL holds a raw pointer to it.
ACCEPT_ANY_CERTIFICATE = _VerifyCallback(_accept_any)


class TLSUnavailable(SettingsError):
    """Optional client certificates cannot be requested with this Python/OpenSSL."""


# What the accept-any callback needs from OpenSSL (OpenSSL_version_num is libcrypto's).
_SYMBOLS = (
    "SSL_CTX_set_verify",
    "SSL_CTX_get_verify_mode",
    "SSL_CTX_get_options",
    "OpenSSL_version_num",
)


def ssl_library(module_file: str | None) -> ctypes.CDLL:
    """OpenSSL as the ``_ssl`` module links it: symbols are looked up through the handle of
    ``module_file`` (the program itself when None: ``_ssl`` built in), and must be the
    version ``ssl`` reports. Raises :class:`TLSUnavailable` naming what is missing."""
    where = module_file or "the Python program (_ssl is built in)"
    try:
        lib = ctypes.CDLL(module_file)
    except OSError as exc:
        raise TLSUnavailable(f"cannot open {where}: {exc}") from exc
    missing = [name for name in _SYMBOLS if not hasattr(lib, name)]
    if missing:
        raise TLSUnavailable(
            f"{', '.join(missing)} not reachable through {where} "
            "(OpenSSL linked statically with hidden symbols?)"
        )
    lib.OpenSSL_version_num.argtypes = []
    lib.OpenSSL_version_num.restype = ctypes.c_ulong
    found = lib.OpenSSL_version_num()
    if found != ssl.OPENSSL_VERSION_NUMBER:
        raise TLSUnavailable(
            f"the OpenSSL reached through {where} is version {found:#x}, "
            f"not {ssl.OPENSSL_VERSION_NUMBER:#x} as the ssl module reports"
        )
    return lib


@functools.cache
def _libssl() -> ctypes.CDLL:
    return ssl_library(getattr(_ssl, "__file__", None))


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


def _all_exist(*paths: Path) -> bool:
    return all(path.is_file() for path in paths)


def check_client_certificates() -> None:
    """Raise :class:`TLSUnavailable` (exit 2) unless client certificates can be requested."""
    try:
        request_any_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    except TLSUnavailable as exc:
        raise TLSUnavailable(
            "instance.statusPortTLS is on, but this Python cannot request the operator's "
            f"client certificate, so the operator could never authenticate: {exc}"
        ) from None


class ServerTLS:
    """The listener's context and the reloading of its certificate."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.certificate = certificate
        self.key = key
        self.listener: ssl.SSLContext | None = None
        self.current: ssl.SSLContext | None = None
        self.reloads = 0
        self._digest = b""

    def _build(self) -> ssl.SSLContext:
        """The context, requesting client certificates (TLSUnavailable when it cannot)."""
        return server_context(self.certificate, self.key, client_certificates=True)

    async def start(self) -> ssl.SSLContext:
        """Load the files (raises when they are unusable) and return the listener context.

        Files that do not exist yet are waited for: in cluster mode they are written by
        the cluster source (Kubernetes Secrets) while the status server starts."""
        await self._wait_for_files()
        self._digest = await asyncio.to_thread(_digest, self.certificate, self.key)
        context = await asyncio.to_thread(self._build)
        context.sni_callback = self._switch
        self.listener = self.current = context
        return context

    async def _wait_for_files(self) -> None:
        said = False
        while not await asyncio.to_thread(_all_exist, self.certificate, self.key):
            if not said:
                said = True
                log.event(
                    _logger, "waiting for the server certificate", certificate=str(self.certificate)
                )
            await asyncio.sleep(FILES_RECHECK)  # polled: the directory may not exist yet

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
        from instance_manager.process.watch import awatch

        folders = sorted({str(self.certificate.parent), str(self.key.parent)})
        async for _ in awatch(
            *folders, debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS, recursive=False
        ):
            await self.reload()
