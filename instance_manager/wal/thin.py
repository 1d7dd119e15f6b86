"""The per-segment client PostgreSQL runs as archive_command / restore_command.

PostgreSQL starts it once per WAL file, so its start-up time is archive latency: it
imports only the standard library (and little of it), and the daemon runs it as
``python -I -S .../thin.py`` (~10 ms). It asks the running daemon over a Unix socket
and exits 0 only when the daemon confirms; any failure exits 1 with one line on
stderr, and PostgreSQL retries later. It never pretends success.

Usage:
    thin.py archive SOCKET PATH            (%p)
    thin.py restore SOCKET [--rewind] NAME PATH   (%f %p)

Protocol: one JSON object per line each way; the reply is {"ok": true} or
{"ok": false, "error": "...", "code": "not_found" | "error"}.
"""

import json
import os
import socket
import sys

USAGE = "usage: thin.py archive SOCKET PATH | thin.py restore SOCKET [--rewind] NAME PATH"
REPLY_LIMIT = 65536
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def ask(socket_path: str, request: dict[str, object]) -> dict[str, object]:
    """Send one request and wait (without a deadline, like CNPG) for the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(socket_path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(REPLY_LIMIT)
            if not chunk:
                raise ConnectionError("the instance manager closed the connection")
            data += chunk
            if len(data) > REPLY_LIMIT:
                raise ConnectionError("reply too long")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("malformed reply")
    return reply


def build_request(argv: list[str]) -> tuple[str, dict[str, object]]:
    """(socket, request) from the command line; ValueError on bad usage."""
    if len(argv) < 3:
        raise ValueError(USAGE)
    op, sock, rest = argv[0], argv[1], argv[2:]
    if op == "archive" and len(rest) == 1:
        return sock, {"op": "archive", "path": os.path.abspath(rest[0])}
    if op == "restore":
        rewind = "--rewind" in rest
        rest = [a for a in rest if a != "--rewind"]
        if len(rest) == 2:
            name, dest = rest
            return sock, {
                "op": "restore",
                "name": name,
                "dest": os.path.abspath(dest),
                "rewind": rewind,
            }
    raise ValueError(USAGE)


def main(argv: list[str]) -> int:
    try:
        sock, request = build_request(argv)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    what = f"{request['op']} {request.get('name') or os.path.basename(str(request['path']))}"
    try:
        reply = ask(sock, request)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"wal {what}: instance manager not reachable at {sock}: {exc}\n")
        return EXIT_FAILED
    if reply.get("ok") is True:
        return EXIT_OK
    sys.stderr.write(f"wal {what}: {reply.get('error') or 'failed'}\n")
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
