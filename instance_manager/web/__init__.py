"""HTTP servers: probes and operator endpoints on the status port."""
