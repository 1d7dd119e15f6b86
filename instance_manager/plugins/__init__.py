"""CNPG-I plugin support: clients for plugin sidecars and their generated gRPC stubs."""
