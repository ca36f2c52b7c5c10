"""Admin authentication: a bearer token read from a file, checked on every Admin call.

Secure by default: a broker started without `--admin-token-file` refuses every Admin call, so a
shard is never open to whoever can reach its port. The check runs only in the Admin service's
handlers (see `registration.add_service`), so the data path (Publish, Fetch, Ack, Nack) pays
nothing for it. Why a token and not mutual TLS: docs/broker.md, "Admin authentication".
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import grpc

from foreshard_broker.wire import ADMIN_AUTH_METADATA as METADATA_KEY

Context = grpc.aio.ServicerContext[Any, Any]
SCHEME = "Bearer "
DISABLED = "admin API disabled: start the broker with --admin-token-file"
MISSING = f"admin call carries no '{METADATA_KEY}: Bearer <token>' metadata (the broker's --admin-token-file)"
WRONG = "admin token refused: it does not match the broker's --admin-token-file"


class TokenError(ValueError):
    """The token file cannot be used (unreadable or empty)."""


def read_token(path: Path) -> str:
    """The token is the file's contents with surrounding whitespace stripped."""
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise TokenError(f"cannot read the admin token file {path}: {error.strerror}") from error
    if not token:
        raise TokenError(f"the admin token file {path} is empty; write a random token into it")
    return token


class AdminAuth:
    """Decides whether a call's metadata carries the admin token (None: no token configured)."""

    def __init__(self, token: str | None) -> None:
        self._expected = (SCHEME + token).encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def refusal(self, metadata: Any) -> str | None:
        """None when the call may proceed, else the UNAUTHENTICATED message."""
        if self._expected is None:
            return DISABLED
        offered = next((value for key, value in metadata or () if key == METADATA_KEY), None)
        if offered is None:
            return MISSING
        raw = offered if isinstance(offered, bytes) else str(offered).encode()
        return None if hmac.compare_digest(raw, self._expected) else WRONG

    async def check(self, context: Context) -> None:
        problem = self.refusal(context.invocation_metadata())
        if problem is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
