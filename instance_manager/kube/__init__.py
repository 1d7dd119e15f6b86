"""Kubernetes mode: the API server as the cluster source (kubernetes-asyncio only here)."""
