"""The package's imports point down, without cycles, and aiohttp stays in the HTTP layers.

Every module's imports are read with ``ast`` (module level, inside functions and under
``TYPE_CHECKING`` alike) and attributed to a *unit*: a top-level module or subpackage of
``instance_manager``. Units sit in layers::

    cli -> supervisor -> kube -> cluster -> {postgres, web, metrics, plugins, wal, ...}
        -> {process, httpd} -> {state, settings, errors, log, cluster_model, durable}

A unit may import its own layer or a lower one, never a higher one; the graph of units has
no cycle; ``web`` (the HTTP adapters) is imported only by the composition root and the
command line, never by the domain packages it serves; the pgBackRest sidecar is reached
only through the command line; ``aiohttp`` is imported only in ``web/``, ``metrics/server``
and ``httpd``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import instance_manager

PACKAGE = "instance_manager"
ROOT = "(package)"  # instance_manager/__init__.py
LAYERS: dict[str, int] = {
    "cli": 6,
    "__main__": 6,
    "supervisor": 5,
    "kube": 4,
    "cluster": 3,
    "postgres": 2,
    "web": 2,
    "metrics": 2,
    "plugins": 2,
    "wal": 2,
    "backup": 2,
    "upgrade": 2,
    "config_watch": 2,
    "status_cli": 2,
    "pgbackrest": 2,
    "process": 1,
    "httpd": 1,
    "state": 0,
    "settings": 0,
    "errors": 0,
    "log": 0,
    "cluster_model": 0,
    "durable": 0,
    "conditions": 0,
    ROOT: 0,
}
# Units only the named units may import (besides themselves).
RESTRICTED = {"web": {"supervisor", "cli"}, "pgbackrest": {"cli"}}
AIOHTTP_ALLOWED = ("web", "metrics.server", "httpd", "kube.client")
# kubernetes-asyncio (~470 ms, ~35 MB) only where Kubernetes mode talks to the API server.
KUBERNETES_ALLOWED = ("kube.client",)

Edge = tuple[str, str, str]  # (importing module, imported module, unit of the imported one)


def sources(package_dir: Path) -> dict[str, str]:
    """Every module of the package by its dotted name, e.g. ``web.server`` ('' is the root)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path.read_text()
    return found


def _packages(modules: Mapping[str, str]) -> set[str]:
    """The names that are packages: the root and every prefix of another module's name."""
    return {""} | {m.rsplit(".", 1)[0] for m in modules if "." in m}


def _relative_base(name: str, level: int, module: str | None, packages: set[str]) -> str:
    """The absolute name ``from <level dots><module>`` means inside module ``name``."""
    here = name.split(".") if name else []
    if name not in packages:
        here = here[:-1]  # a plain module: its package
    here = here[: len(here) - (level - 1)]
    return ".".join([PACKAGE, *here, *([module] if module else [])])


def imports(name: str, source: str, modules: Mapping[str, str]) -> list[str]:
    """The absolute module names ``name`` imports (outside the package: as written)."""
    packages = _packages(modules)
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _relative_base(name, node.level, node.module, packages)
            for alias in node.names:
                inner = f"{base}.{alias.name}".removeprefix(PACKAGE + ".")
                is_module = base.split(".")[0] == PACKAGE and inner in modules
                found.append(f"{base}.{alias.name}" if is_module else base)
    return found


def unit_of(module: str) -> str | None:
    """The unit of an ``instance_manager`` module name; None outside the package."""
    if module == PACKAGE:
        return ROOT
    if not module.startswith(PACKAGE + "."):
        return None
    return module.split(".")[1]


def edges(modules: Mapping[str, str]) -> list[Edge]:
    out = []
    for name, source in modules.items():
        for target in imports(name, source, modules):
            unit = unit_of(target)
            if unit is not None:
                out.append((name, target, unit))
    return out


def source_unit(module: str) -> str:
    return module.split(".")[0] if module else ROOT


def upward(found: Iterable[Edge]) -> list[str]:
    problems = []
    for name, target, unit in found:
        here = source_unit(name)
        if here not in LAYERS or unit not in LAYERS:
            problems.append(f"{name or ROOT} -> {target}: unit not placed in LAYERS")
        elif LAYERS[unit] > LAYERS[here]:
            problems.append(f"{name or ROOT} -> {target}: imports upward ({here} -> {unit})")
        elif unit in RESTRICTED and here != unit and here not in RESTRICTED[unit]:
            allowed = ", ".join(sorted(RESTRICTED[unit]))
            problems.append(f"{name or ROOT} -> {target}: only {allowed} may import {unit}")
    return problems


def cycles(found: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for name, _, unit in found:
        here = source_unit(name)
        graph.setdefault(here, set())
        graph.setdefault(unit, set())
        if unit != here:
            graph[here].add(unit)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def aiohttp_outside_http(
    modules: Mapping[str, str], library: str = "aiohttp", where: tuple[str, ...] = AIOHTTP_ALLOWED
) -> list[str]:
    """Modules outside ``where`` that import ``library``."""
    bad = []
    for name, source in modules.items():
        allowed = any(name == a or name.startswith(a + ".") for a in where)
        uses = any(t.split(".")[0] == library for t in imports(name, source, modules))
        if uses and not allowed:
            bad.append(name)
    return bad


# -- the package as it is ----------------------------------------------------------------


def package_modules() -> dict[str, str]:
    return sources(Path(instance_manager.__file__).parent)


def test_every_unit_is_placed_in_a_layer() -> None:
    units = {source_unit(name) for name in package_modules()}
    assert units <= set(LAYERS), f"place these in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_point_down() -> None:
    assert upward(edges(package_modules())) == []


def test_no_import_cycle_between_units() -> None:
    assert cycles(edges(package_modules())) == []


def test_aiohttp_only_in_the_http_layers() -> None:
    assert aiohttp_outside_http(package_modules()) == []


def test_kubernetes_asyncio_only_in_the_kubernetes_client() -> None:
    modules = package_modules()
    assert aiohttp_outside_http(modules, "kubernetes_asyncio", KUBERNETES_ALLOWED) == []
    made_up = {**modules, "cluster.sneaky": "import kubernetes_asyncio\n"}
    found = aiohttp_outside_http(made_up, "kubernetes_asyncio", KUBERNETES_ALLOWED)
    assert found == ["cluster.sneaky"]


# -- the checks themselves, on made-up modules -------------------------------------------


def test_the_checks_catch_upward_imports_cycles_and_aiohttp() -> None:
    made_up = {
        "": "",
        "postgres": "",
        "postgres.lifecycle": "def f():\n    from instance_manager.pgbackrest import client\n",
        "pgbackrest": "",
        "pgbackrest.client": "from instance_manager.postgres import lifecycle\n",
        "wal": "",
        "wal.archiver": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from instance_manager.supervisor import Supervisor\n",
        "backup": "",
        "backup.mode": "from aiohttp import web\nfrom ..web import jsonapi\n",
        "web": "",
        "web.jsonapi": "",
        "supervisor": "",
    }
    found = edges(made_up)
    assert cycles(found) == [["pgbackrest", "postgres"]]
    problems = upward(found)
    assert "wal.archiver -> instance_manager.supervisor: imports upward (wal -> supervisor)" in (
        problems
    )
    assert "backup.mode -> instance_manager.web.jsonapi: only cli, supervisor may import web" in (
        problems
    )
    assert any(p.startswith("postgres.lifecycle -> instance_manager.pgbackrest") for p in problems)
    assert aiohttp_outside_http(made_up) == ["backup.mode"]


def test_standalone_modules_do_not_load_kubernetes_asyncio() -> None:
    """Everything a standalone daemon imports at module level leaves kubernetes-asyncio out
    (~470 ms, ~38 MB): only Kubernetes mode imports kube/client.py, inside a function."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import instance_manager.cli, instance_manager.supervisor\n"
        "import instance_manager.cluster.reconciler, instance_manager.cluster.source\n"
        "import instance_manager.web.service, instance_manager.metrics.server\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('kubernetes_asyncio', "
        "'instance_manager.kube')))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == "", out
