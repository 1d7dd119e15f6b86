"""PostgreSQL instance manager: the PID 1 daemon of a CloudNativePG-style pod."""

__version__ = "0.1.0"
