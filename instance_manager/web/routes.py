"""Every URL path and default port we serve, in one place (CloudNativePG's paths)."""

# Ports (the settings may override them: instance.statusPort, instance.localPort).
STATUS_PORT = 8000
LOCAL_PORT = 8010
LOCAL_HOST = "127.0.0.1"  # the local API never listens on anything else

# Status server: probes (no authentication).
STARTUP = "/startupz"
READINESS = "/readyz"
LIVENESS = "/healthz"
FAILSAFE = "/failsafe"

# Status server: instance status (no authentication, like CNPG: kubectl cnpg status).
PG_STATUS = "/pg/status"
OPENAPI = "/openapi.json"

# Status server: operator endpoints (client certificate pinned in the cluster status).
PG_CONTROLDATA = "/pg/controldata"
PG_MODE_BACKUP = "/pg/mode/backup"
PG_ARCHIVE_PARTIAL = "/pg/archive/partial"
UPDATE = "/update"

# Local server (loopback only).
CACHE_PREFIX = "/cache/"
CACHE = CACHE_PREFIX + "{key}"
PG_BACKUP = "/pg/backup"
WAL_ARCHIVE_CONDITION = "/cluster/status/condition/wal/archive"

# The one key of the local cache (CNPG also has wal-archive, wal-restore, wal-restore-config).
CACHE_CLUSTER = "cluster"
