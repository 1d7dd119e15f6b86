"""Version modules of installed distributions, answered without ``importlib.metadata``.

psycopg and psycopg-binary learn their own version when imported (``psycopg/version.py``,
``psycopg_binary/version.py``) by calling ``importlib.metadata.version()``. That loads
``importlib.metadata`` with zipfile, csv and email's parser, about 3 MiB resident in the
idle daemon, to read one header of a file next to the package. :func:`register` puts a
finder on ``sys.meta_path`` that gives each named version module a ``__version__`` read from
that same file: the ``Version:`` header of ``METADATA`` in the distribution's one
``NAME-VERSION.dist-info`` directory, where the package is installed. When that directory
is missing, or there is more than one, or the header is absent, the module is imported as
usual, and importlib.metadata decides.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

# module -> the distribution whose version it holds, as its dist-info directory spells it
PSYCOPG = {"psycopg.version": "psycopg", "psycopg_binary.version": "psycopg_binary"}

_HEADER_LIMIT = 64 << 10  # METADATA headers come first; the description may be long


def installed_version(distribution: str, site: str) -> str | None:
    """The ``Version:`` of ``distribution`` installed in directory ``site``, or None."""
    try:
        entries = os.listdir(site)
    except OSError:
        return None
    found = [
        e
        for e in entries
        if e.endswith(".dist-info")
        and e.startswith(f"{distribution}-")
        and "-" not in e[len(distribution) + 1 : -len(".dist-info")]
    ]
    if len(found) != 1:
        return None
    try:
        with open(os.path.join(site, found[0], "METADATA"), "rb") as f:
            head = f.read(_HEADER_LIMIT)
    except OSError:
        return None
    for line in head.split(b"\n"):
        if not line.strip():
            break  # the end of the headers
        key, _, value = line.partition(b":")
        if key == b"Version" and value.strip():
            return value.strip().decode("ascii", "replace")
    return None


class _Loader:
    def __init__(self, version: str) -> None:
        self.version = version

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        module.__doc__ = "Distribution version (instance_manager/process/distversion.py)"
        module.__version__ = self.version  # type: ignore[attr-defined]


class _Finder:
    def __init__(self, modules: Mapping[str, str]) -> None:
        self.modules = dict(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        distribution = self.modules.get(fullname)
        if distribution is None or not path:
            return None
        # path is the package's __path__: the distribution is installed beside it
        version = installed_version(distribution, os.path.dirname(path[0]))
        if version is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(version))  # type: ignore[arg-type]


def register(modules: Mapping[str, str] = PSYCOPG) -> None:
    """From now on, the first import of each module of ``modules`` (module name ->
    distribution) takes its version from the installed METADATA."""
    wanted = {m: d for m, d in modules.items() if m not in sys.modules}
    if wanted:
        sys.meta_path.insert(0, _Finder(wanted))
