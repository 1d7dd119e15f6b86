"""Kubernetes mode: the API server as the cluster source (kubernetes-asyncio only here).

kubernetes-asyncio is registered to load by the piece (kube/lazy.py) before any module of
this package imports from it.
"""

from .lazy import install

install()
