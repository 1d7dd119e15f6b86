"""pgBackRest as a CNPG-I plugin sidecar: WAL archiving, backups, metrics, recovery.

Run beside PostgreSQL (``instance-manager plugin pgbackrest --socket-dir DIR``, or
``python -m instance_manager.pgbackrest --socket-dir DIR``); it serves CNPG-I on the Unix
socket ``DIR/<PLUGIN_NAME>`` and runs the ``pgbackrest`` program for every request.

Configuration, read again on every request (so a changed Cluster applies at once):

- the plugin's own entry in the Cluster, ``spec.plugins[name=PLUGIN_NAME].parameters``;
  for a recovery bootstrap, the ``plugin.parameters`` of the external cluster named by
  ``spec.bootstrap.recovery.source``;
- the sidecar's ``PGBACKREST_*`` environment variables (parameters win).

A parameter is a pgBackRest option, spelled as in pgbackrest.conf (``repo1-path``) or in
camelCase (``repo1Path``): it becomes ``PGBACKREST_REPO1_PATH`` for pgBackRest. Only the
options on the plugin's allowlist are accepted (repository, credentials, encryption,
compression, retention, parallelism, timeouts: allowlist.py); an option that runs programs
or names local paths (``cmd-ssh``, ``repo1-host``, ``pg1-path``, ``spool-path``...) is
refused, naming it, unless the sidecar was started with ``--allow-option NAME``. The
sidecar's own ``PGBACKREST_*`` variables are not restricted. ``stanza`` is required
(parameter or ``PGBACKREST_STANZA``). One parameter is the plugin's own: ``createStanza``
("true" by default): create the stanza on first use when pgBackRest's ``info`` reports it
missing. The options a request decides (``type``, ``set``, ``target``...) cannot be
parameters. ``PGDATA`` (the sidecar's environment) is ``pg1-path`` unless given. The work
directory and the lock and spool directories must be private to the sidecar's account.
"""

from __future__ import annotations

PLUGIN_NAME = "pgbackrest.instance-manager.io"
PLUGIN_VERSION = "0.1.0"


def main(argv: list[str]) -> int:
    """Serve until SIGTERM/SIGINT; the exit status (0 clean stop, 1 failure, 2 usage)."""
    from instance_manager.pgbackrest.server import run

    return run(argv)
