"""`imagegate keys / accounts / usage / db`: operator commands on the configured database.

They use the same settings as `serve` (`--config FILE`, `IMAGEGATE_*`) and the same operator
actions as the admin API (accounts/admin.py), directly on the database, so they work whether or
not a server is running. Every command migrates the database first, runs its work in one
`asyncio.run`, and disposes the engine before it returns.

Output: what a script wants to read (a new key, tables, JSON, CSV) goes to stdout; the summary
of where state lives (printed first), confirmations and totals go to stderr. A bad setting is
one line naming it, exit status 2 (as for `serve`); every other error is one line on stderr,
exit status 1.

A running server trusts a key it has verified for `auth_cache_seconds` (default 5), so a key
disabled or deleted here stops working there within that time; servers that share Redis
(`redis_url`) are told at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import APIError
from ..settings import Settings
from .common import (
    Command,
    ConfigOption,
    Group,
    console,
    fail,
    load_settings,
    one_line,
    print_summary,
    safe_url,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..accounts.admin import Admin

T = TypeVar("T")

keys_app = typer.Typer(help="API keys: create, list, disable, enable, delete.", cls=Group,
                       no_args_is_help=True, add_completion=False)
accounts_app = typer.Typer(help="Accounts and their prepaid balances.", cls=Group,
                           no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The accounts database.", cls=Group, no_args_is_help=True,
                     add_completion=False)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_MAX_MICROS = 2**63 - 1


# plumbing ---------------------------------------------------------------------------------


def _settings(config: Optional[Path]) -> Settings:
    """The settings (a bad one: one line, exit 2), after which the summary goes to stderr."""
    settings = load_settings(config)
    print_summary(settings)
    return settings


def _run(settings: Settings, work: Callable[["Admin"], Awaitable[T]]) -> T:
    """Open the configured database, migrate it, run `work(admin)`, dispose the engine. Every
    expected failure becomes a one-line error and exit status 1."""
    from ..accounts.admin import Admin
    from ..accounts.database import create_engine, migrate
    from ..accounts.ledger import Ledger

    url = settings.resolved_database_url

    async def main() -> T:
        engine = create_engine(url)
        try:
            await migrate(engine)
            # The CLI never reserves money, so its node id is never written anywhere; it must
            # not run release_stale() either (that is the server's job at start-up).
            ledger = Ledger(engine, node_id=f"cli:{settings.resolved_node_id}",
                            lease_seconds=settings.accounts.reservation_lease_seconds)
            return await work(Admin(engine, ledger, settings.accounts.currency))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except APIError as exc:
        fail(exc.message)
    except typer.Exit:
        raise
    except (OSError, ImportError) as exc:
        fail(f"cannot open the database {safe_url(url)}: {one_line(exc)}")
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError) or type(exc).__module__.startswith("asyncpg"):
            detail = getattr(exc, "orig", None) or exc
            fail(f"database error ({safe_url(url)}): {one_line(detail)}")
        raise


def _utc(value: datetime | None) -> datetime | None:
    """Times from the database as aware UTC (SQLite hands them back without a zone)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _show_time(value: datetime | None) -> str:
    value = _utc(value)
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _out() -> Console:
    """Where tables go: stdout, as wide as the terminal; piped, wide enough not to wrap."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=200)


def _short_time(value: datetime | None) -> str:
    value = _utc(value)
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()  # type: ignore[union-attr]
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=_json_default) + "\n")


def _money(micros: int, currency: str) -> str:
    from ..pricing import format_money

    return format_money(micros, currency)


def parse_when(text: str, *, future: bool, param: str) -> datetime:
    """An ISO 8601 time (a zone-less one is UTC), or a duration such as 30d / 24h / 90m / 2w
    counted forwards (`future`) or backwards from now. Returns an aware UTC datetime."""
    match = _DURATION.match(text)
    now = datetime.now(timezone.utc)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return now + delta if future else now - delta
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"{param}: {text!r} is neither an ISO 8601 time (2025-01-31T12:00:00Z) nor a "
              "duration such as 30d, 24h, 90m or 2w.")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_amount(text: str) -> int:
    """'12.50' -> 12_500_000 micros. Exact: more than six decimal places is an error, never a
    rounding."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        fail(f"{text!r} is not a decimal amount (write it like 12.50 or -3).")
    micros = value * 1_000_000
    if micros != micros.to_integral_value():
        fail(f"{text!r} has more than six decimal places; amounts are kept in millionths.")
    if micros == 0:
        fail("The amount must not be zero.")
    if abs(micros) > _MAX_MICROS:
        fail(f"{text!r} is too large.")
    return int(micros)


def _check_multiplier(text: str) -> None:
    """A finite, non-negative decimal (admin.py alone lets "Infinity" through)."""
    try:
        ok = Decimal(text).is_finite() and Decimal(text) >= 0
    except InvalidOperation:
        ok = False
    if not ok:
        fail(f"{text!r} is not a valid price multiplier (a decimal such as 0.8 or 1.25).")


def _account_names(accounts: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {a["id"]: a for a in accounts}


def _warn_unknown_models(settings: Settings, models: list[str]) -> None:
    """A typo in --model would make a key that can use nothing: say so (but allow it, since the
    model may be configured on the server later)."""
    if not models:
        return
    try:
        from ..catalog import BUILTIN_BACKENDS, Catalog

        catalog = Catalog.from_config(settings.models, BUILTIN_BACKENDS | set(settings.providers))
    except Exception:  # a broken [models] table is `serve`'s to report, not ours
        return
    served = {spec.name for spec in catalog.served()}
    for model in models:
        if model not in served:
            console.print(f"[yellow]warning:[/yellow] `{escape(model)}` is not a model this "
                          "configuration serves.", soft_wrap=True)


# keys -------------------------------------------------------------------------------------


@keys_app.command("create", cls=Command)
def keys_create(
    account: str = typer.Option(..., "--account", "-a", help="Account name (or id) that pays."),
    name: str = typer.Option(..., "--name", "-n", help="A label for the key."),
    admin: bool = typer.Option(False, "--admin", help="May call /admin/... ."),
    expires: Optional[str] = typer.Option(
        None, "--expires", help="ISO 8601 time (UTC if no zone) or a duration: 30d, 12h, 2w."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", "-m", help="Allow only this model (repeat for several)."),
    ip: Optional[list[str]] = typer.Option(
        None, "--ip", help="Allow only this IP address or CIDR network (repeat for several)."),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute (per server "
                                      "process)."),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", help="Requests at once (per server process)."),
    price_multiplier: Optional[str] = typer.Option(
        None, "--price-multiplier", help="Decimal factor on list prices; replaces the "
        "account's."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Create an API key. The key is printed once, alone on stdout; only its hash is kept."""
    settings = _settings(config)
    expires_at = parse_when(expires, future=True, param="--expires") if expires else None
    if expires_at is not None and expires_at <= datetime.now(timezone.utc):
        fail(f"--expires {expires!r} is in the past.")
    if not name.strip() or len(name) > 200:
        fail("--name must be 1 to 200 characters.")
    for option, limit in (("--rpm", rpm), ("--concurrency", concurrency)):
        if limit is not None and limit < 1:
            fail(f"{option} must be at least 1.")
    if price_multiplier is not None:
        _check_multiplier(price_multiplier)
    _warn_unknown_models(settings, model or [])

    async def work(admin_: "Admin") -> tuple[str, dict[str, Any], dict[str, Any]]:
        created = await admin_.create_key(
            account, name, is_admin=admin, expires_at=expires_at,
            allowed_models=list(model) if model else None,
            allowed_ips=list(ip) if ip else None, rpm_limit=rpm,
            concurrency_limit=concurrency, price_multiplier=price_multiplier)
        owner = await admin_.account(created.info["account_id"])
        return created.key, created.info, owner

    key, info, owner = _run(settings, work)
    sys.stdout.write(key + "\n")
    sys.stdout.flush()
    console.print(f"created key {info['id']} {escape(repr(info['name']))} for account "
                  f"{escape(owner['name'])}: {_describe_key(info, owner)}", soft_wrap=True)
    console.print("The key above is shown only this once; store it now.", soft_wrap=True)


def _describe_key(info: dict[str, Any], owner: dict[str, Any] | None) -> str:
    parts = [f"prefix {info['prefix']}", "admin" if info["is_admin"] else "user"]
    if info["expires_at"] is not None:
        parts.append(f"expires {_show_time(info['expires_at'])}")
    if info["allowed_models"] is not None:
        parts.append("models " + ", ".join(info["allowed_models"]))
    if info["allowed_ips"] is not None:
        parts.append("ips " + ", ".join(info["allowed_ips"]))
    if info["rpm_limit"] is not None:
        parts.append(f"{info['rpm_limit']} rpm")
    if info["concurrency_limit"] is not None:
        parts.append(f"{info['concurrency_limit']} concurrent")
    multiplier = info["price_multiplier"]
    if multiplier is None and owner is not None:
        parts.append(f"price x{owner['price_multiplier']} (account's)")
    elif multiplier is not None:
        parts.append(f"price x{multiplier}")
    return ", ".join(parts)


def _key_state(info: dict[str, Any]) -> str:
    if not info["enabled"]:
        return "disabled"
    expires = _utc(info["expires_at"])
    if expires is not None and expires <= datetime.now(timezone.utc):
        return "expired"
    return "enabled"


@keys_app.command("list", cls=Command)
def keys_list(
    account: Optional[str] = typer.Option(None, "--account", "-a",
                                          help="Only this account's keys."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """List API keys (their prefixes: full keys are never stored)."""
    settings = _settings(config)

    async def work(admin_: "Admin") -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
        return await admin_.keys(account), _account_names(await admin_.accounts())

    keys, owners = _run(settings, work)
    if as_json:
        _print_json([{**k, "state": _key_state(k)} for k in keys])
        return
    table = Table("id", "account", "name", "prefix", "role", "state", "expires", "models",
                  "ips", "limits", "price x")
    for k in keys:
        owner = owners.get(k["account_id"])
        multiplier = k["price_multiplier"] or (
            f"{owner['price_multiplier']} (acct)" if owner else "-")
        table.add_row(
            str(k["id"]), escape(owner["name"] if owner else str(k["account_id"])),
            escape(k["name"]), k["prefix"] + "…", "admin" if k["is_admin"] else "user",
            _key_state(k), _short_time(k["expires_at"]),
            escape(", ".join(k["allowed_models"])) if k["allowed_models"] is not None else "any",
            escape(", ".join(k["allowed_ips"])) if k["allowed_ips"] is not None else "any",
            _limits(k), escape(multiplier))
    if not keys:
        console.print("no keys")
        return
    _out().print(table)


def _limits(info: dict[str, Any]) -> str:
    parts = []
    if info["rpm_limit"] is not None:
        parts.append(f"{info['rpm_limit']} rpm")
    if info["concurrency_limit"] is not None:
        parts.append(f"{info['concurrency_limit']} at once")
    return ", ".join(parts) or "-"


def _set_enabled(key_id: int, enabled: bool, config: Optional[Path]) -> None:
    settings = _settings(config)
    info = _run(settings, lambda admin_: admin_.set_key_enabled(key_id, enabled))
    console.print(f"key {info['id']} {escape(repr(info['name']))} ({info['prefix']}…) is now "
                  f"{'enabled' if enabled else 'disabled'}; {_servers_notice(settings, key_id)}",
                  soft_wrap=True)


def _servers_notice(settings: Settings, key_id: int) -> str:
    """Tell running servers about a key change through Redis when they share one (they
    forget the key at once); otherwise say how long their key caches may still trust it."""
    limits = settings.limits
    if limits.redis_url is not None:
        from ..limits.redis import announce_key_change

        if asyncio.run(announce_key_change(limits.redis_url, limits.redis_prefix,
                                           limits.redis_timeout_seconds, key_id)):
            return "running servers sharing Redis were told at once."
    return (f"a running server notices within {settings.accounts.auth_cache_seconds:g} s.")


@keys_app.command("disable", cls=Command)
def keys_disable(key_id: int = typer.Argument(..., metavar="ID", help="Key id (keys list)."),
                 config: Optional[Path] = ConfigOption) -> None:
    """Disable a key: requests with it get 401 invalid_api_key. Reversible."""
    _set_enabled(key_id, False, config)


@keys_app.command("enable", cls=Command)
def keys_enable(key_id: int = typer.Argument(..., metavar="ID", help="Key id (keys list)."),
                config: Optional[Path] = ConfigOption) -> None:
    """Enable a disabled key again."""
    _set_enabled(key_id, True, config)


@keys_app.command("delete", cls=Command)
def keys_delete(
    key_id: int = typer.Argument(..., metavar="ID", help="Key id (keys list)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Don't ask for confirmation."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Delete a key for good (its usage records stay). `disable` is the reversible way."""
    settings = _settings(config)
    info = _run(settings, lambda admin_: admin_.key(key_id))
    label = f"key {info['id']} {info['name']!r} ({info['prefix']}…)"
    if not yes:
        if not sys.stdin.isatty():
            fail(f"not deleting {label} without --yes (no terminal to confirm on).")
        if not typer.confirm(f"Delete {label}?", default=False, err=True):
            fail("not deleted.")
    _run(settings, lambda admin_: admin_.delete_key(key_id))
    console.print(f"deleted {escape(label)}; {_servers_notice(settings, key_id)}",
                  soft_wrap=True)


# accounts ---------------------------------------------------------------------------------


@accounts_app.command("create", cls=Command)
def accounts_create(
    name: str = typer.Argument(..., help="Account name (not all digits: those look up ids)."),
    unlimited: bool = typer.Option(False, "--unlimited",
                                   help="Never runs out: charges are recorded, nothing is "
                                        "refused for balance."),
    price_multiplier: str = typer.Option("1", "--price-multiplier",
                                         help="Decimal factor on list prices (group ratio)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Create an account (balance 0; top it up with `accounts topup`)."""
    if not name.strip() or len(name) > 200:
        fail("The account name must be 1 to 200 characters.")
    _check_multiplier(price_multiplier)
    if name.isdigit():
        fail(f"{name!r} is all digits, which commands read as an account id; pick a name with "
              "a letter in it.")
    settings = _settings(config)
    info = _run(settings, lambda admin_: admin_.create_account(
        name, unlimited=unlimited, price_multiplier=price_multiplier))
    console.print(f"created account {info['id']} {escape(info['name'])}: "
                  f"{'unlimited' if info['unlimited'] else 'prepaid'}, price "
                  f"x{escape(info['price_multiplier'])}, balance "
                  f"{_money(info['balance_micros'], info['currency'])}", soft_wrap=True)


@accounts_app.command("topup", cls=Command, context_settings={"ignore_unknown_options": True})
def accounts_topup(
    name: str = typer.Argument(..., help="Account name (or id)."),
    amount: str = typer.Argument(..., help="Exact decimal in currency units, e.g. 12.50; "
                                           "negative for a correction."),
    note: Optional[str] = typer.Option(None, "--note", help="Kept with the ledger entry."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Add money to an account's balance (or take it away, with a negative AMOUNT)."""
    micros = parse_amount(amount)
    settings = _settings(config)
    info = _run(settings, lambda admin_: admin_.topup(name, micros, note))
    verb = "credited {} to" if micros > 0 else "debited {} from"
    console.print(verb.format(_money(abs(micros), info["currency"]))
                  + f" {escape(info['name'])}: "
                  f"balance {_money(info['balance_micros'], info['currency'])}", soft_wrap=True)


@accounts_app.command("show", cls=Command)
def accounts_show(
    name: str = typer.Argument(..., help="Account name (or id)."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout (amounts in micros)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """An account's balance, what is held for running requests, what it spent."""
    settings = _settings(config)

    async def work(admin_: "Admin") -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info = await admin_.account(name)
        return info, await admin_.keys(info["id"])

    info, keys = _run(settings, work)
    if as_json:
        _print_json(info)
        return
    currency = info["currency"]
    lines = [
        ("account", f"{info['name']} (id {info['id']})"),
        ("type", "unlimited" if info["unlimited"] else "prepaid"),
        ("balance", _money(info["balance_micros"], currency)),
        ("held", _money(info["held_micros"], currency) + "  (reserved by running requests)"),
        ("spent", _money(info["spent_micros"], currency)),
        ("price multiplier", info["price_multiplier"]),
        ("keys", f"{len(keys)} ({sum(1 for k in keys if _key_state(k) == 'enabled')} usable)"),
        ("created", _show_time(info["created_at"])),
    ]
    width = max(len(label) for label, _ in lines)
    sys.stdout.write("".join(f"{label:<{width}}  {value}\n" for label, value in lines))


@accounts_app.command("list", cls=Command)
def accounts_list(
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout (amounts in micros)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """All accounts with their balances."""
    settings = _settings(config)
    accounts = _run(settings, lambda admin_: admin_.accounts())
    if as_json:
        _print_json(accounts)
        return
    table = Table("id", "name", "type", "balance", "held", "spent", "price x", "created")
    for a in accounts:
        table.add_row(str(a["id"]), escape(a["name"]),
                      "unlimited" if a["unlimited"] else "prepaid",
                      _money(a["balance_micros"], a["currency"]),
                      _money(a["held_micros"], a["currency"]),
                      _money(a["spent_micros"], a["currency"]), escape(a["price_multiplier"]),
                      _short_time(a["created_at"]))
    if not accounts:
        console.print("no accounts")
        return
    _out().print(table)


# usage ------------------------------------------------------------------------------------


def usage(
    key: Optional[int] = typer.Option(None, "--key", help="Only this key id."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only this model."),
    account: Optional[str] = typer.Option(None, "--account", "-a",
                                          help="Only this account (name or id)."),
    since: Optional[str] = typer.Option(None, "--since",
                                        help="ISO 8601 time (UTC if no zone) or a duration "
                                             "back from now: 24h, 7d."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout (the admin API's format)."),
    limit: int = typer.Option(10_000, "--limit", min=1, max=100_000,
                              help="At most this many rows: the newest, listed oldest first."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Usage records, one per request: what was asked, delivered and charged."""
    since_at = parse_when(since, future=False, param="--since") if since else None
    settings = _settings(config)

    async def work(admin_: "Admin") -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
        rows = await admin_.usage(key_id=key, model=model, account=account, since=since_at,
                                  limit=limit)
        return rows, _account_names(await admin_.accounts())

    rows, owners = _run(settings, work)
    if as_csv:
        from ..accounts.usage_export import usage_csv

        sys.stdout.write(usage_csv(rows))
        return
    table = Table("time", "request", "key", "account", "model", "size", "quality", "images",
                  "cost", "status", "ms")
    totals: dict[str, int] = {}
    for r in rows:
        owner = owners.get(r["account_id"]) if r["account_id"] is not None else None
        currency = owner["currency"] if owner else settings.accounts.currency
        totals[currency] = totals.get(currency, 0) + r["cost_micros"]
        status = str(r["status"]) + (f" {r['error_code']}" if r["error_code"] else "")
        table.add_row(_show_time(r["created_at"]), escape(r["request_id"]),
                      str(r["key_id"]) if r["key_id"] is not None else "-",
                      escape(owner["name"]) if owner else str(r["account_id"] or "-"),
                      escape(r["model"] or "-"), r["size"] or "-", escape(r["quality"] or "-"),
                      f"{r['images_delivered']}/{r['n']}", _money(r["cost_micros"], currency),
                      escape(status), str(r["latency_ms"]))
    if rows:
        _out().print(table)
    total = ", ".join(_money(v, c) for c, v in sorted(totals.items())) or _money(
        0, settings.accounts.currency)
    console.print(f"{len(rows)} requests, "
                  f"{sum(r['images_delivered'] for r in rows)} images, {total}"
                  + (f" (limit {limit} reached: narrow with --since)" if len(rows) == limit
                     else ""), soft_wrap=True)


# db ---------------------------------------------------------------------------------------


@db_app.command("upgrade", cls=Command)
def db_upgrade(config: Optional[Path] = ConfigOption) -> None:
    """Migrate the database to the newest schema (what `serve` does at start-up)."""
    from ..accounts.database import create_engine, migrate

    settings = _settings(config)
    url = settings.resolved_database_url

    async def main() -> tuple[str | None, str | None]:
        engine = create_engine(url)
        try:
            before = await _revision(engine)
            await migrate(engine)
            return before, await _revision(engine)
        finally:
            await engine.dispose()

    try:
        before, after = asyncio.run(main())
    except Exception as exc:
        fail(f"cannot upgrade {safe_url(url)}: {one_line(getattr(exc, 'orig', None) or exc)}")
    if before == after:
        sys.stdout.write(f"{safe_url(url)}: already at revision {after}\n")
    else:
        sys.stdout.write(f"{safe_url(url)}: upgraded from revision {before or '(empty)'} "
                         f"to {after}\n")


async def _revision(engine: "AsyncEngine") -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision())
