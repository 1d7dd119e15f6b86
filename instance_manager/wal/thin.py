"""The per-segment client PostgreSQL runs as archive_command / restore_command.

The daemon installs this file, with its socket path and deadline filled in below, at
every start (``wal/install.py``): compiled as ``SCRATCH/bin/manager.pyc``, which
PostgreSQL runs as ``<python> -IS SCRATCH/bin/manager.pyc wal-archive %p`` and
``... wal-restore %f %p``, the way CloudNativePG runs its copied ``/controller/manager``,
and as the script ``SCRATCH/bin/manager`` to run by hand. The copy is self-contained: it
needs neither the package nor its virtualenv, so a package upgrade or ``PUT /update``
cannot break it, and the account PostgreSQL runs as never reads the source tree.

PostgreSQL starts it once per WAL file, so its start-up time is archive latency. It
imports nothing beyond built-in C modules (``sys``, ``posix``, ``_socket``; even ``os``,
``json`` and ``socket`` would double its start-up) and runs as ``python -I -S`` on
compiled code: a call costs the bare interpreter's start plus the daemon's answer
(bench/wal.py measures both). A segment the daemon has already archived ahead does not
start it at all: archive_command tests for its marker in the shell first. It asks the
running daemon over a Unix socket and exits 0 only when the daemon confirms; any failure,
including no answer within the deadline, exits 1 with one line on stderr, and PostgreSQL
retries later. It never pretends success.

Usage:
    manager wal-archive [--socket S] [--timeout SECONDS] PATH                 (%p)
    manager wal-restore [--socket S] [--timeout SECONDS] [--rewind] NAME PATH (%f %p)

Protocol, one line each way, fields separated by NUL (which no path can contain):
    request  "archive" NUL path LF  |  "restore" NUL name NUL path NUL ("0"|"1") LF
    reply    "ok" LF  |  "error" NUL code NUL message LF      (code: not_found | error)
"""

import _socket
import posix
import sys

# Filled in by the installer; empty when the package runs this module itself.
SOCKET = ""
TIMEOUT = 0.0  # seconds; 0 = DEFAULT_TIMEOUT

DEFAULT_TIMEOUT = 120.0
# A socket timeout must fit the C clock; "inf" or 1e300 would not.
MAX_TIMEOUT = 1e6
USAGE = (
    "usage: manager wal-archive [--socket S] [--timeout SECONDS] PATH\n"
    "       manager wal-restore [--socket S] [--timeout SECONDS] [--rewind] NAME PATH"
)
REPLY_LIMIT = 65536
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Request:
    def __init__(self, socket: str, timeout: float, fields: list[str]) -> None:
        self.socket = socket
        self.timeout = timeout
        self.fields = fields


def absolute(path: str) -> str:
    """%p is relative to PGDATA, PostgreSQL's working directory."""
    return path if path.startswith("/") else posix.getcwd() + "/" + path


def ask(request: Request) -> list[str]:
    """Send one request and wait, at most ``request.timeout`` seconds, for the reply."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    conn.settimeout(request.timeout)
    try:
        conn.connect(request.socket)
        conn.sendall("\0".join(request.fields).encode() + b"\n")
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


def _options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``--socket S``, ``--timeout T`` and ``--rewind`` from the positional words."""
    options: dict[str, str] = {}
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--socket", "--timeout") and i + 1 < len(args):
            options[arg[2:]] = args[i + 1]
            i += 2
            continue
        if arg == "--rewind":
            options["rewind"] = "1"
        elif arg.startswith("--"):
            raise ValueError(f"unknown option {arg}\n{USAGE}")
        else:
            words.append(arg)
        i += 1
    return options, words


def parse(argv: list[str]) -> Request:
    """The request the command line asks for; ValueError on bad usage."""
    if not argv:
        raise ValueError(USAGE)
    options, words = _options(argv[1:])
    socket = options.get("socket", SOCKET)
    if not socket:
        raise ValueError(f"no --socket given\n{USAGE}")
    try:
        timeout = float(options.get("timeout", 0)) or TIMEOUT or DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"--timeout: not a number\n{USAGE}") from None
    if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails the comparison as well
        raise ValueError(f"--timeout must be positive and at most {MAX_TIMEOUT:g}\n{USAGE}")
    for word in [*words, socket]:
        try:
            word.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{word!r} is not valid UTF-8\n{USAGE}") from None
    if argv[0] == "wal-archive" and len(words) == 1 and "rewind" not in options:
        return Request(socket, timeout, ["archive", absolute(words[0])])
    if argv[0] == "wal-restore" and len(words) == 2:
        rewind = "1" if "rewind" in options else "0"
        return Request(socket, timeout, ["restore", words[0], absolute(words[1]), rewind])
    raise ValueError(USAGE)


def main(argv: list[str]) -> int:
    try:
        request = parse(argv)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    what = f"{request.fields[0]} {request.fields[1].rpartition('/')[2]}"
    try:
        reply = ask(request)
    except TimeoutError:
        sys.stderr.write(
            f"wal {what}: no answer from the instance manager within {request.timeout:g} s\n"
        )
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"wal {what}: instance manager not reachable at {request.socket}: {exc}\n")
        return EXIT_FAILED
    if reply == ["ok"]:
        return EXIT_OK
    message = reply[2] if len(reply) >= 3 else "malformed reply"
    sys.stderr.write(f"wal {what}: {message}\n")
    return EXIT_FAILED


def finish(code: int) -> None:
    """Exit with ``code`` once stderr is flushed, skipping the interpreter's finalization:
    the client holds nothing to clean up, and finalization is ~1 ms of every call."""
    try:  # noqa: SIM105 - contextlib is not a built-in module: it would cost start-up
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr is gone: the exit status still tells PostgreSQL
    posix._exit(code)


if __name__ == "__main__":
    finish(main(sys.argv[1:]))
