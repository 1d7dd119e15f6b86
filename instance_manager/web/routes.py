"""Every URL path we serve, in one place (CloudNativePG's paths)."""

STARTUP = "/startupz"
READINESS = "/readyz"
LIVENESS = "/healthz"
FAILSAFE = "/failsafe"
PG_STATUS = "/pg/status"
