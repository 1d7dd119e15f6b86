"""kube/lazy.py: kubernetes-asyncio loaded by the piece behaves like the library loaded whole.

Each check runs in a fresh interpreter: the point is what a daemon's process imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

PACKAGES = (
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.api",
    "kubernetes_asyncio.client.models",
)


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# Prints {package: {name: "module.qualname"}} for every public name the real package's
# __init__ binds, read through the package the way callers read it.
NAMES = """
import json, sys, types
out = {}
for package in PACKAGES:
    module = sys.modules.get(package) or __import__(package, fromlist=["_"])
    names = {}
    for name in sorted(REAL[package]):
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            names[name] = value.__name__
        else:
            module_name = getattr(value, "__module__", "")
            names[name] = f"{module_name}.{getattr(value, '__qualname__', value)}"
    out[package] = names
print(json.dumps(out))
"""

# The public names each real __init__ binds, from a whole import in a separate process.
REAL_NAMES = """
import json, kubernetes_asyncio, kubernetes_asyncio.client
import kubernetes_asyncio.client.api, kubernetes_asyncio.client.models, sys
print(json.dumps({p: [n for n in vars(sys.modules[p])
                      if not n.startswith("_") and n != "absolute_import"]
                  for p in PACKAGES}))
"""


def test_the_daemon_s_kubernetes_modules_load_a_small_part_of_the_library() -> None:
    out = run(
        "import sys\n"
        "import instance_manager.kube.client, instance_manager.kube.source\n"
        "import instance_manager.kube.lease, instance_manager.kube.start\n"
        "import json\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kubernetes_asyncio'))))\n"
    )
    loaded = json.loads(out)
    assert "kubernetes_asyncio.client.api_client" in loaded
    assert "kubernetes_asyncio.config.kube_config" in loaded
    assert not [m for m in loaded if m.startswith("kubernetes_asyncio.client.models.")]
    # the whole library is ~900 modules
    assert len(loaded) < 40, loaded


def test_every_name_resolves_to_what_the_whole_library_binds() -> None:
    real = json.loads(run(f"PACKAGES = {PACKAGES!r}\n" + REAL_NAMES))
    prelude = f"REAL = {real!r}\nPACKAGES = {PACKAGES!r}\n"
    whole = json.loads(run(prelude + "import kubernetes_asyncio.client\n" + NAMES))
    lazy = json.loads(run(prelude + "import instance_manager.kube\n" + NAMES))
    for package in PACKAGES:
        assert len(whole[package]) > 3
        assert lazy[package] == whole[package], package
    assert "V1Lease" in lazy["kubernetes_asyncio.client"]
    assert "CoreV1Api" in lazy["kubernetes_asyncio.client.api"]


def test_a_model_is_loaded_when_the_client_deserializes_one() -> None:
    out = run(
        "import sys, json\n"
        "import instance_manager.kube.client as k\n"
        "from kubernetes_asyncio.client.api_client import ApiClient\n"
        "class Response:\n"
        "    data = json.dumps({'metadata': {'name': 'c1'}, 'spec': {'holderIdentity': 'p'}})\n"
        "async def main():\n"
        "    api = ApiClient()\n"
        "    lease = api.deserialize(Response(), 'V1Lease')\n"
        "    await api.close()\n"
        "    print(type(lease).__name__, lease.metadata.name, lease.spec.holder_identity,\n"
        "          'kubernetes_asyncio.client.models.v1_lease' in sys.modules)\n"
        "import asyncio\n"
        "asyncio.run(main())\n"
    )
    assert out == "V1Lease c1 p True"


def test_a_library_already_imported_whole_is_left_alone() -> None:
    out = run(
        "import kubernetes_asyncio, sys\n"
        "before = sys.modules['kubernetes_asyncio.client']\n"
        "import instance_manager.kube.client\n"
        "print(sys.modules['kubernetes_asyncio.client'] is before,\n"
        "      len([m for m in sys.modules\n"
        "           if m.startswith('kubernetes_asyncio.client.models.')]) > 100)\n"
    )
    assert out == "True True"


def test_an_unknown_name_is_an_attribute_error() -> None:
    out = run(
        "import instance_manager.kube\n"
        "from kubernetes_asyncio import client\n"
        "try:\n    client.NoSuchThing\n"
        "except AttributeError as exc:\n    print(exc)\n"
    )
    assert out == "module 'kubernetes_asyncio.client' has no attribute 'NoSuchThing'"
