"""kubernetes-asyncio, loaded by the piece instead of all at once.

The library's package ``__init__`` files import every API class and every model (about
900 modules, 33 MB of RSS, ~400 ms); the daemon uses its configuration loaders, its
``ApiClient`` and three API classes. ``install()`` registers the library's four packages
(``kubernetes_asyncio``, ``.client``, ``.client.api``, ``.client.models``) as modules that
import a name only when it is first asked for (PEP 562), found by reading what the real
``__init__`` file would have imported. Their submodules are the library's own files,
imported as usual: ``kubernetes_asyncio.client.CoreV1Api`` or ``from kubernetes_asyncio
import client`` keep working, and ``ApiClient`` finds a model class (``V1Lease``) when it
deserializes one. When the library was already imported whole, nothing is replaced.
The lazy modules are process/lazy.py's; only the reading of the names is done here.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from instance_manager.process import lazy

ROOT = "kubernetes_asyncio"
PACKAGES = (ROOT, f"{ROOT}.client", f"{ROOT}.client.api", f"{ROOT}.client.models")
# `from kubernetes_asyncio.x.y import Name` and `import kubernetes_asyncio.x as name`
_FROM = re.compile(r"^from\s+(kubernetes_asyncio[\w.]*)\s+import\s+(\w+)\s*$", re.M)
_AS = re.compile(r"^import\s+(kubernetes_asyncio[\w.]*)\s+as\s+(\w+)\s*$", re.M)
_VERSION = re.compile(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", re.M)


class NotInstalled(ImportError):
    pass


def install() -> None:
    """Register the lazy packages unless the library is already imported."""
    if ROOT in sys.modules:
        return
    spec = importlib.util.find_spec(ROOT)  # finds the package without running it
    if spec is None or spec.origin is None:
        raise NotInstalled("kubernetes-asyncio is not installed")
    root = Path(spec.origin).parent
    parent: ModuleType | None = None
    for name in PACKAGES:
        module = _package(name, root.joinpath(*name.split(".")[1:]))
        sys.modules[name] = module
        if parent is not None:  # kubernetes_asyncio.client is an attribute of its parent
            setattr(parent, name.rsplit(".", 1)[1], module)
        parent = module


def _package(name: str, directory: Path) -> ModuleType:
    init = directory / "__init__.py"
    text = init.read_text(encoding="utf-8")
    # the library's __init__ files are long lists of absolute imports: regular expressions
    # read them several times faster than a parse (process/lazy.py's read_init)
    names = {found: (source, False) for source, found in _FROM.findall(text)}
    names.update({alias: (source, True) for source, alias in _AS.findall(text)})
    version = _VERSION.search(text)
    constants = {"__version__": version.group(1)} if version else {}
    return lazy.lazy_package(name, init, names, constants)
