"""Token authentication for the local Ray a run starts: one line of raysim's own instead of
Ray's warning.

Ray 2.60: `ray.init(address="local")` with RAY_AUTH_MODE unset turns token
authentication on itself (ray/_private/worker.py calls enable_token_auth_by_default,
then ensure_token_if_auth_enabled, which writes a new token to ~/.ray/auth_token when
none is found) and logs a warning that suggests RAY_AUTH_MODE=disabled. The run keeps
Ray's choice, authentication on, and only replaces that warning with a line saying where
the token is. A RAY_AUTH_MODE the user set is theirs: Ray then logs nothing, nor do we.
Joining a cluster by address never changes the mode (Ray's rule too).
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_DEFAULT_ON_WARNING = "_warn_token_auth_enabled"  # the function that logs it


def token_source() -> tuple[str, Path | None]:
    """Where Ray reads the token (its order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token): a description and the file, if it is one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN", None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return str(path), path


class _DropDefaultOnWarning(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName == RAY_DEFAULT_ON_WARNING:
            self.seen = True
            return False
        return True


@contextmanager
def own_auth_message(stream=None):
    """Around a local ray.init: Ray's "token authentication is enabled" warning is dropped,
    and if Ray did enable it, one line of ours names the token (and whether Ray just made it)."""
    _, path = token_source()
    existed = path is None or path.is_file()
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    drop = _DropDefaultOnWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
    if drop.seen:
        where, _ = token_source()
        made = "" if existed else ", created by this run"
        print(f"raysim: local Ray with token authentication on (token: {where}{made})", file=stream or sys.stderr)
