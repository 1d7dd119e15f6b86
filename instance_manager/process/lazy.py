"""Library packages whose ``__init__`` imports a name only when it is first asked for.

A package ``__init__`` that imports every submodule makes a process pay for the parts it
never uses: ``import aiohttp`` loads the HTTP client (its connector builds two TLS contexts
from the system's CA store) when the daemon only serves HTTP with ``aiohttp.web``, and
``import watchfiles`` loads anyio and multiprocessing when the daemon only needs its Rust
watcher. :func:`lazy_package` builds a module that stands for such a package (PEP 562):
it reads which name the real ``__init__`` binds from which module (its ``from X import Y``
and ``import X.Y as Z`` statements at module level, read with ``ast``, not run) and its
literal constants (``__version__``, ``__all__``), and imports a name on first access.
Submodules are the library's own files, imported as usual, so every name resolves to the
same object the whole package would bind.

:func:`register` installs an import finder: the first ``import aiohttp`` (in any thread,
from any module) gets the lazy package. A name the ``__init__`` binds some other way (a
function of its own, a module ``__getattr__``) runs the real ``__init__`` in the lazy
module when first asked for, and the package is whole from then on.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# name -> (module it comes from, whether the name is that module itself)
Names = dict[str, tuple[str, bool]]


def read_init(package: str, source: str) -> tuple[Names, dict[str, Any]]:
    """The names a package's ``__init__`` source imports, and its literal constants."""
    import ast  # not at module level: register() is called early in the daemon's start

    names: Names = {}
    constants: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.level, node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = (base, False)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:  # `import a.b` alone binds `a`, not a name of the package
                    names[alias.asname] = (alias.name, True)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            constants.update({t.id: value for t in targets if isinstance(t, ast.Name)})
    return names, constants


def _absolute(package: str, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def lazy_package(
    name: str, init: Path, names: Names, constants: dict[str, Any] | None = None
) -> ModuleType:
    """A module standing for package ``name`` (its ``__init__.py`` is ``init``) that
    imports each of ``names`` on first access; any other name is a submodule or an
    AttributeError."""
    module = ModuleType(name)
    fill(module, init, names, constants or {}, whole_on_miss=False)
    module.__spec__ = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(init.parent)]
    )
    return module


def fill(
    module: ModuleType,
    init: Path,
    names: Names,
    constants: dict[str, Any],
    whole_on_miss: bool,
) -> None:
    """Make ``module`` the lazy form of the package whose ``__init__.py`` is ``init``.
    A name neither in ``names`` nor a submodule runs the real ``__init__`` in the module
    if ``whole_on_miss``, else it is an AttributeError."""
    name = module.__name__
    module.__dict__.update(constants)
    module.__doc__ = f"{name}, loaded by the piece (instance_manager/process/lazy.py)"
    module.__file__ = str(init)
    module.__path__ = [str(init.parent)]
    module.__package__ = name
    whole = _whole(module, init) if whole_on_miss else None
    module.__getattr__ = _resolver(module, names, whole)  # type: ignore[method-assign]


def _resolver(
    module: ModuleType, names: Names, whole: Callable[[], None] | None
) -> Callable[[str], Any]:
    def resolve(attribute: str) -> Any:
        if attribute not in names:
            return _missing(module, attribute, whole)
        source, itself = names[attribute]
        imported = importlib.import_module(source)
        # `import x.y as name` binds the module; `from x import name` binds its member,
        # which may be a submodule not imported yet (`from . import hdrs`)
        if itself:
            value: Any = imported
        elif imported is not module and hasattr(imported, attribute):
            value = getattr(imported, attribute)
        else:
            value = importlib.import_module(f"{source}.{attribute}")
        setattr(module, attribute, value)  # later lookups skip this function
        return value

    return resolve


def _missing(module: ModuleType, attribute: str, whole: Callable[[], None] | None) -> Any:
    """``package.sub`` read as an attribute before anything imported it (the real
    ``__init__`` would have imported it on the way), or a name only the real one binds."""
    name = f"{module.__name__}.{attribute}"
    if attribute.startswith("_"):  # probes such as __wrapped__ must not load the library
        raise AttributeError(f"module {module.__name__!r} has no attribute {attribute!r}")
    if importlib.util.find_spec(name) is not None:
        return importlib.import_module(name)
    if whole is None:
        raise AttributeError(f"module {module.__name__!r} has no attribute {attribute!r}")
    whole()
    return getattr(module, attribute)


def _whole(module: ModuleType, init: Path) -> Callable[[], None]:
    """Runs the real ``__init__`` in ``module`` once: it binds every name for good."""
    done = False
    lock = threading.Lock()

    def run() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
            # the real __init__ may define its own __getattr__; else none is needed now
            del module.__getattr__
            loader = importlib.machinery.SourceFileLoader(module.__name__, str(init))
            code = loader.get_code(module.__name__)
            assert code is not None  # a source file's
            exec(code, module.__dict__)

    return run


class _Finder:
    """On ``sys.meta_path``: finds the registered packages and gives them the lazy loader."""

    def __init__(self, packages: Iterable[str]) -> None:
        self.packages = set(packages)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.packages:
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None or real.origin is None or not real.origin.endswith("__init__.py"):
            return None  # not installed, or not a plain source package: load it as usual
        spec = importlib.util.spec_from_file_location(
            fullname,
            real.origin,
            loader=_Loader(),
            submodule_search_locations=list(real.submodule_search_locations or []),
        )
        return spec


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        assert module.__spec__ is not None and module.__spec__.origin is not None
        init = Path(module.__spec__.origin)
        names, constants = read_init(module.__name__, init.read_text(encoding="utf-8"))
        fill(module, init, names, constants, whole_on_miss=True)


def register(packages: Iterable[str]) -> None:
    """From now on, the first import of each of ``packages`` gives its lazy form (a
    package already imported stays as it is)."""
    finder = _Finder(p for p in packages if p not in sys.modules)
    if finder.packages:
        sys.meta_path.insert(0, finder)
