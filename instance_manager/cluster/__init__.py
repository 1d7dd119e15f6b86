"""Standalone cluster mode: the view of the cluster, the reconciler and its role changes."""
