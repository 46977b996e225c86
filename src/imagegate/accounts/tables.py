"""SQLAlchemy models. Schema changes go through an Alembic migration in ../migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# Ids that other rows, the CLI or an operator's records refer to are never reused: SQLite's
# AUTOINCREMENT (PostgreSQL's sequences never reuse anyway). Migration 0003 converts old databases.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = dict(NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    currency: Mapped[str] = mapped_column(String(8), default="USD")
    balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    """What the account may still spend: top-ups minus charges minus what is reserved now."""
    unlimited: Mapped[bool] = mapped_column(Boolean, default=False)
    price_multiplier: Mapped[str] = mapped_column(String(32), default="1")
    """A reseller's group ratio, as an exact decimal string."""
    label_producer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """`ContentProducer` of the AI-content label on this account's images (a reseller's own
    name or filing code); NULL: the server's `labels.producer`."""
    visible_mark: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """Draw the visible "AI generated" mark on this account's images; NULL: the server's
    `labels.visible_mark`."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = dict(NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    """The first characters of the key, shown in listings so people can tell keys apart."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    allowed_ips: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    price_multiplier: Mapped[str | None] = mapped_column(String(32), nullable=True)
    visible_mark: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """The visible mark for this key's images; NULL: as its account says."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Reservation(Base):
    """Money held for one request until it is settled or released."""

    __tablename__ = "reservations"

    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="held")  # held | settled | released
    charged_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    node_id: Mapped[str] = mapped_column(String(200))
    """The name (`node_id` setting) of the server that holds it."""
    incarnation: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """The server process that holds it (`incarnations.id`): released once that process is
    provably gone, never while it runs. Empty on rows from before migration 0003."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_reservations_status_expires", "status", "expires_at"),)


class LedgerEntry(Base):
    """Every movement of money that is not a reservation: top-ups, charges, adjustments."""

    __tablename__ = "ledger_entries"
    __table_args__ = dict(NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                            index=True)
    kind: Mapped[str] = mapped_column(String(16))  # topup | charge | adjust
    amount_micros: Mapped[int] = mapped_column(BigInteger)  # signed: + credits, - debits
    request_id: Mapped[str | None] = mapped_column(String(80), nullable=True, unique=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRecord(Base):
    """One row per request: what was asked, what was delivered, what it cost. Never image bytes."""

    __tablename__ = "usage"
    __table_args__ = dict(NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    request_id: Mapped[str] = mapped_column(String(80), unique=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    deployment: Mapped[str | None] = mapped_column(String(200), nullable=True)
    upstream_request_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """The upstream provider's own id for the call, to reconcile with its bills."""
    n: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[str | None] = mapped_column(String(32), nullable=True)
    quality: Mapped[str | None] = mapped_column(String(32), nullable=True)
    images_delivered: Mapped[int] = mapped_column(Integer, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status the client got
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)


class IdempotencyRecord(Base):
    """The first outcome of a request sent with an `Idempotency-Key`, replayed on retries.
    A key is scoped to its account, its API key and its endpoint."""

    __tablename__ = "idempotency"

    account_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    """The API key that sent it; 0 with IMAGEGATE_AUTH=off."""
    endpoint: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # running | done
    holder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The server process running it (`incarnations.id`): a claim of a process that is gone
    is removed at once, so a retry runs again."""
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The response body with any base64 image replaced by a reference to the stored file."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Incarnation(Base):
    """One run of a server process. It holds a lock for as long as it lives (a PostgreSQL
    advisory lock, or a file lock beside the SQLite database): what it reserved or claimed is
    released only once the lock is free (the process is gone) or, where the lock cannot be
    seen, its heartbeat is older than `reservation_lease_seconds`."""

    __tablename__ = "incarnations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(200), index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageReject(Base):
    """A usage row the database refused even after it was made safe (accounts/usage.py): kept
    here, as ASCII JSON, for the operator (`GET /admin/usage/rejects`)."""

    __tablename__ = "usage_rejects"
    __table_args__ = dict(NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    request_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    row: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)


class ResponseImage(Base):
    """An image a `/v1/responses` answer returned, so a later request can edit it through
    `previous_response_id` (or by passing its item back). The bytes stay in the image store,
    which keeps them for `url_ttl_seconds`; rows older than that are deleted."""

    __tablename__ = "response_images"

    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The output item's id (`ig_...`)."""
    response_id: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                            index=True)
    output_index: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(80))
    """The stored file's name in the image store."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
