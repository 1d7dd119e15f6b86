"""Backups: CNPG's backup mode (a non-exclusive backup held open) and plugin backups."""
