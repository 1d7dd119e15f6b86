"""process/lazy.py: aiohttp and watchfiles loaded by the piece behave like the whole
libraries, and the standalone daemon's modules leave their unused halves out.

Each import check runs in a fresh interpreter: the point is what a daemon's process loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from instance_manager.cli import LAZY_LIBRARIES

REGISTER = "from instance_manager.process import lazy\nlazy.register(LIBRARIES)\n"
PRELUDE = f"LIBRARIES = {LAZY_LIBRARIES!r}\n"

# What the standalone daemon imports, after cli.prepare_imports(): cli.run_command's
# modules, the preloaded ones (supervisor.PRELOAD), the metrics server; then one settings
# watch runs.
DAEMON_IMPORTS = """
import asyncio, importlib, json, sys, tempfile
import instance_manager.cli, instance_manager.supervisor as supervisor
for name in supervisor.PRELOAD:
    importlib.import_module(name)
import instance_manager.metrics.server
from instance_manager.process.watch import awatch

async def one_watch():
    with tempfile.TemporaryDirectory() as folder:
        async for _ in awatch(folder, rust_timeout=10, yield_on_timeout=True):
            break

asyncio.run(one_watch())
print(json.dumps(sorted(sys.modules)))
"""

# {name: "module.qualname"} for every public name of each library, read through the
# package the way callers read it.
NAMES = """
import importlib, json, types
out = {}
for package, names in REAL.items():
    module = importlib.import_module(package)
    found = {}
    for name in names:
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            found[name] = value.__name__
        elif hasattr(value, "__qualname__"):
            found[name] = f"{value.__module__}.{value.__qualname__}"
        else:  # an instance, such as aiohttp.PAYLOAD_REGISTRY
            found[name] = f"a {type(value).__module__}.{type(value).__qualname__}"
    out[package] = found
print(json.dumps(out))
"""

# The public names of each whole library: what its __init__ binds, and its __all__.
REAL_NAMES = """
import importlib, json
out = {}
for package in LIBRARIES:
    module = importlib.import_module(package)
    names = {n for n in vars(module) if not n.startswith("_")}
    out[package] = sorted(names | set(getattr(module, "__all__", ())))
print(json.dumps(out))
"""


def run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_standalone_daemon_leaves_the_aiohttp_client_and_anyio_out() -> None:
    prepare = "import instance_manager.cli\ninstance_manager.cli.prepare_imports()\n"
    loaded = set(json.loads(run(prepare + DAEMON_IMPORTS)))
    assert "aiohttp.web" in loaded
    assert "watchfiles._rust_notify" in loaded
    unused = ("aiohttp.client", "aiohttp.connector", "aiohttp.cookiejar", "aiohttp.tracing")
    assert not loaded & set(unused)
    assert not [m for m in loaded if m.split(".")[0] in ("anyio", "multiprocessing")]
    assert "watchfiles.main" not in loaded
    assert "frozenlist" in loaded and "frozenlist._frozenlist" not in loaded  # no libstdc++
    # the same modules without the registration load them: the check means something
    whole = set(json.loads(run(PRELUDE + DAEMON_IMPORTS)))
    assert "aiohttp.connector" in whole and "anyio" in whole
    assert "frozenlist._frozenlist" in whole


def test_every_public_name_resolves_to_what_the_whole_library_binds() -> None:
    real = json.loads(run(PRELUDE + REAL_NAMES))
    prelude = PRELUDE + f"REAL = {real!r}\n"
    whole = json.loads(run(prelude + NAMES))
    lazy = json.loads(run(prelude + REGISTER + NAMES))
    for package in LAZY_LIBRARIES:
        assert len(whole[package]) > 10, package
        assert lazy[package] == whole[package], package
    assert lazy["aiohttp"]["ClientSession"] == "aiohttp.client.ClientSession"
    assert lazy["aiohttp"]["hdrs"] == "aiohttp.hdrs"
    assert lazy["watchfiles"]["awatch"] == "watchfiles.main.awatch"


def test_the_library_s_own_modules_see_the_same_package() -> None:
    out = run(
        PRELUDE
        + REGISTER
        + "import aiohttp, aiohttp.http, sys\n"
        + "from aiohttp import web, hdrs\n"
        + "print(aiohttp.__version__ == aiohttp.http.__version__, aiohttp.hdrs is hdrs,\n"
        + "      sys.modules['aiohttp'] is aiohttp, 'aiohttp.client' in sys.modules)\n"
    )
    assert out == "True True True False"


def test_a_name_only_the_real_init_binds_makes_the_package_whole() -> None:
    """aiohttp's __init__ defines a module __getattr__ for its Gunicorn workers."""
    whole = run("import aiohttp\nprint(repr(aiohttp.GunicornWebWorker))")
    out = run(
        PRELUDE
        + REGISTER
        + "import aiohttp, sys\n"
        + "print(repr(aiohttp.GunicornWebWorker))\n"
        + "print('aiohttp.connector' in sys.modules, 'ClientSession' in vars(aiohttp))\n"
    )
    assert out.splitlines() == [whole, "True True"]


def test_private_and_unknown_names() -> None:
    out = run(
        PRELUDE
        + REGISTER
        + "import aiohttp, sys\n"
        + "print(hasattr(aiohttp, '__wrapped__'), 'aiohttp.client' in sys.modules)\n"
        + "try:\n    aiohttp.NoSuchThing\n"
        + "except AttributeError as exc:\n    print(exc)\n"
    )
    lines = out.splitlines()
    assert lines[0] == "False False"  # a probe of a private name loads nothing
    assert "NoSuchThing" in lines[1]


def test_a_library_already_imported_whole_is_left_alone() -> None:
    out = run(
        PRELUDE
        + "import aiohttp, sys\n"
        + "before = sys.modules['aiohttp']\n"
        + REGISTER
        + "import aiohttp.web\n"
        + "print(sys.modules['aiohttp'] is before, type(aiohttp.__spec__.loader).__name__)\n"
    )
    assert out == "True SourceFileLoader"
