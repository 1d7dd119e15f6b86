"""The status port's TLS set up in a fresh interpreter after another OpenSSL was mapped.

    python -m tests.tls_probe psycopg CERT_DIR
    python -m tests.tls_probe library CERT_DIR LIBSSL

``psycopg``: import psycopg first (its binary wheel maps its own libssl); ``library``: map
the libssl at LIBSSL after ``ssl``. Then a server context that requests client certificates
is built and the ``operator`` certificate of CERT_DIR (self-signed, trusted by nobody) is
presented to it. Prints one JSON line: the client certificate's fingerprint as the server
saw it, and the libssl files mapped in the process.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import ssl
import sys
from pathlib import Path

HANDSHAKE_TIMEOUT = 10.0


def mapped_libssl() -> list[str]:
    lines = Path("/proc/self/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in lines if "/libssl" in line})


async def handshake(context: ssl.SSLContext, certs: Path) -> bytes:
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(writer.get_extra_info("ssl_object").getpeercert(binary_form=True) or b"")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(certs / "server.crt"))
    client.check_hostname = False
    client.load_cert_chain(str(certs / "operator.crt"), str(certs / "operator.key"))
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        der = await seen
    writer.close()
    server.close()
    return der


def main(argv: list[str]) -> int:
    mode, certs = argv[0], Path(argv[1])
    if mode == "psycopg":
        import psycopg

        psycopg.pq.version()  # the wheel's libpq, and with it its libssl, is loaded
    else:
        ctypes.CDLL(argv[2])
    from instance_manager.web.auth import public_key_fingerprint
    from instance_manager.web.tls import server_context

    context = server_context(certs / "server.crt", certs / "server.key", client_certificates=True)
    der = asyncio.run(handshake(context, certs))
    print(json.dumps({"fingerprint": public_key_fingerprint(der), "libssl": mapped_libssl()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
