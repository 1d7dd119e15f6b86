"""WAL archiving and restore: the daemon side, and the thin client PostgreSQL runs."""
