"""Operator authentication: the client certificate's public key, pinned in the cluster status.

The operator presents a self-signed client certificate generated in memory; it writes the
SHA-256 of that certificate's SubjectPublicKeyInfo (hex; compared case-insensitively) into
the Cluster's ``status.operatorCertificateFingerprint``. Protected endpoints answer, as CNPG
does:

- 401 ``client certificate required``: no TLS, or no certificate presented (permanent);
- 503 ``operator certificate not registered``: nothing pinned yet (transient);
- 503 ``operator certificate not recognized``: another key (transient while a new
  fingerprint propagates);
- otherwise the endpoint itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from instance_manager import log
from instance_manager.settings import Settings
from instance_manager.web.jsonapi import plain_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FINGERPRINT_FIELD = "operatorCertificateFingerprint"
_logger = log.get("web")


class DerError(ValueError):
    """The certificate is not the DER structure we expect."""


def _element(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at ``offset``."""
    if offset + 2 > len(der):
        raise DerError("truncated element")
    tag, first = der[offset], der[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise DerError("unsupported length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise DerError("truncated element")
    return tag, start, end


def subject_public_key_info(certificate: bytes) -> bytes:
    """The DER bytes of the SubjectPublicKeyInfo of an X.509 certificate (DER).

    Certificate = SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    """
    tag, start, _ = _element(certificate, 0)
    if tag != 0x30:
        raise DerError("not a certificate")
    tag, position, tbs_end = _element(certificate, start)
    if tag != 0x30:
        raise DerError("no tbsCertificate")
    tag, _, end = _element(certificate, position)
    if tag == 0xA0:  # explicit version
        position = end
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, position = _element(certificate, position)
    tag, _, end = _element(certificate, position)
    if tag != 0x30 or end > tbs_end:
        raise DerError("no subjectPublicKeyInfo")
    return certificate[position:end]


def public_key_fingerprint(certificate: bytes) -> str:
    """CNPG's fingerprint: hex SHA-256 of the certificate's SubjectPublicKeyInfo."""
    return hashlib.sha256(subject_public_key_info(certificate)).hexdigest()


def peer_certificate(request: web.BaseRequest) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


class OperatorAuth:
    """Wraps handlers with the pinned-certificate check."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    def check(self, request: web.BaseRequest) -> web.Response | None:
        """None when the caller is the operator, else the refusal to send."""
        certificate = peer_certificate(request)
        if not certificate:
            return self._refuse(request, 401, "client certificate required")
        expected = str(self._settings().cluster.status.get(FINGERPRINT_FIELD) or "").strip()
        if not expected:
            return self._refuse(request, 503, "operator certificate not registered")
        try:
            actual = public_key_fingerprint(certificate)
        except DerError:
            actual = ""
        if not hmac.compare_digest(actual.encode(), expected.lower().encode()):
            return self._refuse(request, 503, "operator certificate not recognized", actual)
        return None

    @staticmethod
    def _refuse(
        request: web.BaseRequest, status: int, message: str, fingerprint: str = ""
    ) -> web.Response:
        log.event(
            _logger,
            "operator endpoint refused",
            logging.DEBUG,
            path=request.path,
            reason=message,
            fingerprint=fingerprint or None,
        )
        return plain_error(status, message)

    def protect(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = self.check(request)
            return refusal if refusal is not None else await handler(request)

        return guarded
