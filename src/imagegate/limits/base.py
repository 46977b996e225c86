"""The interfaces behind per-key limits, the API-key cache and the replicas' reports.

Each has a backend in this process (process.py) and one over Redis (redis.py), chosen by the
`[limits]` settings. Everything here is keyed by plain ids and holds opaque records, so the
accounts (which decide what a key may do) sit above it and nothing here knows a key's row.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from ..errors import APIError

WINDOW_SECONDS = 60
"""`rpm_limit` counts the requests of any such span (a moving window, not clock minutes)."""

UNAVAILABLE_RETRY_SECONDS = 5
"""Retry-After of a request refused because the shared counts cannot be reached."""


class LimitsUnavailable(APIError):
    """The shared counts (Redis) cannot be reached, so a key with limits cannot be admitted:
    refused rather than let through uncounted (fail closed)."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"

    def __init__(self, message: str = "This API key's rate or concurrency limits cannot be "
                 "checked right now (the shared limits store is unreachable). Retry shortly.",
                 **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"retry-after": str(UNAVAILABLE_RETRY_SECONDS)})
        super().__init__(message, **kwargs)


class Limits(Protocol):
    """The counts behind a key's limits; each method is atomic on its own. A backend that
    cannot count raises `LimitsUnavailable` from `hit` and `take_slot`."""

    async def hit(self, key_id: int, limit: int) -> float | None:
        """Count one request of `key_id` if fewer than `limit` are in its window: None.
        Otherwise count nothing and say how many seconds until the oldest leaves it."""
        ...

    async def take_slot(self, key_id: int, limit: int) -> bool:
        """Take one of the key's `limit` concurrency slots; False when all are taken."""
        ...

    async def give_slot(self, key_id: int) -> None:
        """Give back a slot this process took for `key_id`. Never raises: a slot that cannot
        be given back is freed by its lease (or with the process)."""
        ...


class Keyed(Protocol):
    """What the key cache needs of a cached record: the key it belongs to."""

    @property
    def key_id(self) -> int | None: ...


R = TypeVar("R", bound=Keyed)


class KeyCache(Protocol[R]):
    """Key lookups by token hash, kept for a short while so each request needn't read the
    database. A cached None is a token that matches no key."""

    def get(self, digest: str) -> R | None:
        """The cached lookup of `digest`; KeyError when there is none."""
        ...

    def put(self, digest: str, record: R | None) -> None:
        ...

    async def forget(self, key_id: int) -> None:
        """Drop the key `key_id` (after an admin change to it), so the change takes effect
        at once (on every replica, for a shared backend)."""
        ...

    async def forget_all(self) -> None:
        """Drop every cached key (after a change that may touch many, such as an account's)."""
        ...


Report = dict[str, Any]
"""One replica's admission counts, as `GET /admin/replicas` lists them (has a `node_id`)."""


class ReplicaBoard(Protocol):
    """Where each replica posts its counts and the admin reads everyone's."""

    async def publish(self, report: Report) -> None:
        """Post this replica's counts; they vanish unless posted again soon."""
        ...

    async def withdraw(self, node_id: str) -> None:
        """Remove this replica's counts (it is shutting down)."""
        ...

    async def reports(self) -> list[Report]:
        """The counts of every live replica, as last posted (`LimitsUnavailable` when they
        cannot be read)."""
        ...
