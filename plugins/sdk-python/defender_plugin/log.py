"""Logging through the host: every line is tagged with the plugin's name.

Inside the component the lines go to the host's log (at most 100 lines of
1 KiB per call); in plain CPython (unit tests) they go to standard error.
"""

import sys

try:  # Only inside the component: componentize-py's generated bindings.
    from wit_world.imports import log as _wit_log  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _wit_log = None


def _log(level: str, message: str) -> None:
    if _wit_log is not None:
        _wit_log.log(getattr(_wit_log.Level, level), str(message))
    else:
        print(f"{level.lower()}: {message}", file=sys.stderr)


def trace(message: str) -> None:
    _log("TRACE", message)


def debug(message: str) -> None:
    _log("DEBUG", message)


def info(message: str) -> None:
    _log("INFO", message)


def warn(message: str) -> None:
    _log("WARN", message)


def error(message: str) -> None:
    _log("ERROR", message)
