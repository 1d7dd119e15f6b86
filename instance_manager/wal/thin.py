"""The per-segment client PostgreSQL runs as archive_command / restore_command.

PostgreSQL starts it once per WAL file, so its start-up time is archive latency. It
imports nothing beyond built-in C modules (``sys``, ``posix``, ``_socket``; even ``os``,
``json`` and ``socket`` would double its start-up), and the daemon runs it as
``python -I -S .../thin.py``: about 7 ms, like a C program. It asks the running daemon
over a Unix socket and exits 0 only when the daemon confirms; any failure exits 1 with
one line on stderr, and PostgreSQL retries later. It never pretends success.

Usage:
    thin.py archive SOCKET PATH                   (%p)
    thin.py restore SOCKET [--rewind] NAME PATH   (%f %p)

Protocol, one line each way, fields separated by NUL (which no path can contain):
    request  "archive" NUL path LF  |  "restore" NUL name NUL path NUL ("0"|"1") LF
    reply    "ok" LF  |  "error" NUL code NUL message LF      (code: not_found | error)
"""

import _socket
import posix
import sys

USAGE = "usage: thin.py archive SOCKET PATH | thin.py restore SOCKET [--rewind] NAME PATH"
REPLY_LIMIT = 65536
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def absolute(path: str) -> str:
    """%p is relative to PGDATA, PostgreSQL's working directory."""
    return path if path.startswith("/") else posix.getcwd() + "/" + path


def ask(socket_path: str, request: list[str]) -> list[str]:
    """Send one request and wait (without a deadline, like CNPG) for the reply fields."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
        conn.sendall("\0".join(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(REPLY_LIMIT)
            if not chunk:
                raise ConnectionError("the instance manager closed the connection")
            data += chunk
            if len(data) > REPLY_LIMIT:
                raise ConnectionError("reply too long")
    finally:
        conn.close()
    return data[:-1].decode(errors="replace").split("\0")


def build_request(argv: list[str]) -> tuple[str, list[str]]:
    """(socket, request fields) from the command line; ValueError on bad usage."""
    if len(argv) < 3:
        raise ValueError(USAGE)
    op, sock, rest = argv[0], argv[1], argv[2:]
    if op == "archive" and len(rest) == 1:
        return sock, ["archive", absolute(rest[0])]
    if op == "restore":
        rewind = "--rewind" in rest
        rest = [a for a in rest if a != "--rewind"]
        if len(rest) == 2:
            return sock, ["restore", rest[0], absolute(rest[1]), "1" if rewind else "0"]
    raise ValueError(USAGE)


def main(argv: list[str]) -> int:
    try:
        sock, request = build_request(argv)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    what = f"{request[0]} {request[1].rpartition('/')[2]}"
    try:
        reply = ask(sock, request)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"wal {what}: instance manager not reachable at {sock}: {exc}\n")
        return EXIT_FAILED
    if reply == ["ok"]:
        return EXIT_OK
    message = reply[2] if len(reply) >= 3 else "malformed reply"
    sys.stderr.write(f"wal {what}: {message}\n")
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
