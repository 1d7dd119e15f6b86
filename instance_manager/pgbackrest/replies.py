"""Turning our errors into gRPC statuses, logged once where they happen."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from instance_manager import log
from instance_manager.pgbackrest.options import ConfigError
from instance_manager.pgbackrest.runner import CommandFailed

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_logger = log.get("pgbackrest")


def status_of(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, CommandFailed):
        return exc.code
    if isinstance(exc, ConfigError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


async def fail(context: Context, rpc: str, exc: Exception, **fields: Any) -> NoReturn:
    """Log the failure (a missing WAL file only at debug level) and end the call with it."""
    code = status_of(exc)
    level = logging.DEBUG if code == grpc.StatusCode.NOT_FOUND else logging.ERROR
    log.event(_logger, f"{rpc} failed", level, code=code.name, error=str(exc), **fields)
    await context.abort(code, str(exc))
