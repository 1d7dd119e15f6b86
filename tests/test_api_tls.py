"""TLS on the status port and the operator's pinned certificate (CNPG's 401/503 rules)."""

from __future__ import annotations

import asyncio
import ctypes.util
import importlib.util
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from instance_manager.errors import EXIT_INVALID_SETTINGS
from instance_manager.web.auth import DerError, public_key_fingerprint, subject_public_key_info
from instance_manager.web.server import serve
from instance_manager.web.tls import ServerTLS, TLSUnavailable, ssl_library
from tests.api_helpers import (
    Primary,
    api_spec,
    certs,
    make_certs,
    openssl_fingerprint,
    operator_status,
    primary,
    self_signed,
    serve_api,
    write_cluster,
)
from tests.daemon import free_port

__all__ = ["certs", "primary"]  # fixtures
PROTECTED = ("/pg/controldata", "/pg/mode/backup", "/pg/archive/partial")


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url) as resp:
        return resp.status, await resp.text()


async def test_pinned_operator_certificate(primary: Primary) -> None:
    async with serve_api(primary.settings(), primary.certs) as api:
        async with api.client("operator") as client:
            code, body = await get(client, api.base + "/pg/controldata")
            assert code == 200, body
            assert "Database cluster state:" in body
            assert (await get(client, api.base + "/pg/status"))[0] == 200
        async with api.client(None) as client:  # TLS, no certificate
            for path in PROTECTED:
                assert await get(client, api.base + path) == (401, "client certificate required\n")
            assert (await get(client, api.base + "/pg/status"))[0] == 200  # open
            assert await get(client, api.base + "/healthz") == (200, "OK")
        async with api.client("intruder") as client:
            for path in PROTECTED:
                code, body = await get(client, api.base + path)
                assert (code, body) == (503, "operator certificate not recognized\n")


async def test_an_upper_case_pinned_fingerprint_is_accepted(primary: Primary) -> None:
    pinned = primary.certs.fingerprint.upper()
    write_cluster(
        primary.inst,
        api_spec(),
        operator_status(primary.certs, operatorCertificateFingerprint=pinned),
    )
    async with serve_api(primary.settings(), primary.certs) as api:
        async with api.client("operator") as client:
            code, body = await get(client, api.base + "/pg/controldata")
            assert code == 200, body
        async with api.client("intruder") as client:
            assert (await get(client, api.base + "/pg/controldata"))[0] == 503


async def test_nothing_pinned_is_503_and_plain_http_is_401(primary: Primary) -> None:
    write_cluster(primary.inst, api_spec(), {})
    async with serve_api(primary.settings(), primary.certs) as api, api.client() as client:
        assert await get(client, api.base + "/pg/controldata") == (
            503,
            "operator certificate not registered\n",
        )
    write_cluster(primary.inst, api_spec(), operator_status(primary.certs))
    async with serve_api(primary.settings()) as api, api.client(None) as client:
        assert api.base.startswith("http://")
        for path in PROTECTED:
            assert await get(client, api.base + path) == (401, "client certificate required\n")


async def test_tls_12_is_refused(primary: Primary) -> None:
    async with serve_api(primary.settings(), primary.certs) as api:
        context = primary.certs.client("operator", tls12=True)
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.open_connection("127.0.0.1", api.status_port, ssl=context)


async def served_fingerprint(port: int, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return public_key_fingerprint(der)


async def test_certificate_reloaded_without_dropping_the_listener(tmp_path: Path) -> None:
    live, other = tmp_path / "live", tmp_path / "other"
    first, second = make_certs(live), make_certs(other)
    tls = ServerTLS(first.server, live / "server.key")
    context = await tls.start()
    port = free_port()

    async def hello(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="hi")

    app = aiohttp.web.Application()
    app.router.add_get("/", hello)
    started = asyncio.Event()
    server = asyncio.get_running_loop().create_task(
        serve(app, "127.0.0.1", port, context, started=started)
    )
    watcher = asyncio.get_running_loop().create_task(tls.watch())
    try:
        await started.wait()
        assert await served_fingerprint(port, first.server) == openssl_fingerprint(first.server)
        # A key that does not match the certificate: refused, the old pair keeps serving.
        shutil.copy(other / "server.key", live / "server.key")
        await asyncio.sleep(1.5)
        assert tls.reloads == 0
        assert await served_fingerprint(port, first.server) == openssl_fingerprint(first.server)
        shutil.copy(other / "server.crt", live / "server.crt")
        for _ in range(60):
            if tls.reloads:
                break
            await asyncio.sleep(0.1)
        assert tls.reloads == 1
        assert await served_fingerprint(port, second.server) == openssl_fingerprint(second.server)
        assert not server.done()  # same listener throughout
    finally:
        for task in (watcher, server):
            task.cancel()
        await asyncio.gather(watcher, server, return_exceptions=True)


@pytest.mark.parametrize("rsa", [False, True])
def test_fingerprint_matches_openssl(tmp_path: Path, rsa: bool) -> None:
    cert = self_signed(tmp_path, "c", rsa=rsa)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert public_key_fingerprint(der) == openssl_fingerprint(cert)


@pytest.mark.parametrize("junk", [b"", b"\x30", b"\x30\x82\xff\xff", b"\x04\x01\x00", b"\x30\x00"])
def test_fingerprint_of_junk_is_an_error(junk: bytes) -> None:
    with pytest.raises(DerError):
        subject_public_key_info(junk)


# -- which OpenSSL the verify callback is installed through ----------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
# psycopg[binary] (a dependency) bundles its own OpenSSL here.
_WHEEL = importlib.util.find_spec("psycopg_binary")
# Resolved: the process maps report real paths, and .venv may be a symlink to /opt.
WHEEL_LIBS = Path(_WHEEL.origin if _WHEEL and _WHEEL.origin else ".").resolve().parent.parent / (
    "psycopg_binary.libs"
)


def probe(certs: Path, *mode: str) -> dict[str, list[str] | str]:
    """tests/tls_probe.py in a fresh interpreter (the libraries it maps are the point)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.tls_probe", mode[0], str(certs), *mode[1:]],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str] | str] = json.loads(done.stdout)
    return result


def test_a_psycopg_import_before_the_tls_setup_does_not_matter(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    seen = probe(certs.directory, "psycopg")
    assert seen["fingerprint"] == certs.fingerprint  # the untrusted certificate was accepted
    assert any(str(WHEEL_LIBS) in path for path in seen["libssl"]), seen  # two libssl mapped


def test_another_libssl_mapped_first_in_the_maps_does_not_matter(tmp_path: Path) -> None:
    """A different OpenSSL build named libssl.so.N, mapped after ssl (so at a lower address):
    the callback must still go to the libssl that _ssl links."""
    certs = make_certs(tmp_path / "certs")
    other = tmp_path / "other"
    other.mkdir()
    wheel_ssl = sorted(WHEEL_LIBS.glob("libssl*.so*"))
    assert wheel_ssl, f"no libssl in {WHEEL_LIBS}"
    for library in WHEEL_LIBS.glob("libcrypto*.so*"):
        shutil.copy(library, other / library.name)  # found through the copy's $ORIGIN rpath
    shutil.copy(wheel_ssl[0], other / "libssl.so.3")
    seen = probe(certs.directory, "library", str(other / "libssl.so.3"))
    assert seen["fingerprint"] == certs.fingerprint
    assert str(other / "libssl.so.3") in seen["libssl"]


def test_openssl_out_of_reach_is_an_invalid_setting_naming_what_is_missing() -> None:
    """What a Python whose _ssl has OpenSSL linked in with hidden symbols gives: an object
    through which SSL_CTX_set_verify cannot be found (here the C library)."""
    libc = ctypes.util.find_library("c")
    assert libc
    with pytest.raises(TLSUnavailable, match=f"SSL_CTX_set_verify.*{libc}") as refused:
        ssl_library(libc)
    assert refused.value.exit_code == EXIT_INVALID_SETTINGS
