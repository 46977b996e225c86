"""`imagegate keys / accounts / usage / db` as an operator runs them: `python -m imagegate ...` in
a subprocess, on a SQLite file (and once on PostgreSQL), checked against a real server."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import httpx
import pytest

from imagegate import __version__

pytestmark = pytest.mark.e2e  # runs `python -m imagegate` as a process

PRICED_TINY_SD = """
[models.tiny-sd.pricing]
per_image = "0.01"
"""
IMAGE_BODY = {"model": "tiny-sd", "prompt": "a lighthouse", "n": 2, "size": "64x64",
              "response_format": "b64_json", "num_inference_steps": 1}


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def words(self) -> str:
        """stderr + stdout with whitespace runs folded to one space (Rich wraps lines)."""
        return " ".join((self.stderr + "\n" + self.stdout).split())

    def ok(self) -> "Run":
        assert self.returncode == 0, f"{self.args}: rc {self.returncode}\n{self.stderr}"
        assert "Traceback" not in self.stderr
        return self

    def failed(self, *phrases: str) -> "Run":
        """Exit 1 with one `error:` line on stderr (after the summary of where state lives, if
        the settings were read), nothing on stdout, no traceback."""
        assert self.returncode == 1, f"{self.args}: rc {self.returncode}\n{self.stderr}"
        lines = without_summary(self.stderr).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        assert self.stdout == ""
        for phrase in phrases:
            assert phrase in self.stderr, (phrase, self.stderr)
        return self

    def json(self):
        return json.loads(self.ok().stdout)


Cli = Callable[..., Run]


def without_summary(stderr: str) -> str:
    """stderr less the summary every command prints first: `imagegate VERSION`, then lines
    indented by two spaces."""
    lines = stderr.splitlines()
    if lines and lines[0] == f"imagegate {__version__}":
        lines = lines[1:]
        while lines and lines[0].startswith("  "):
            lines = lines[1:]
    return "\n".join(lines)


def make_cli(data_dir: Path, *, in_process: bool = False, **settings: str) -> Cli:
    """Run `imagegate ARGS` with IMAGEGATE_DATA_DIR=data_dir (plus `settings`).

    A subprocess by default, exactly as an operator runs it. `in_process` runs the same Typer
    app through typer's CliRunner instead (same settings, same stdout/stderr/exit status): for
    the tables of error cases, where starting ~40 interpreters would be most of this file's
    running time.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    ours = {"IMAGEGATE_DATA_DIR": str(data_dir), "COLUMNS": "250", "HF_HUB_OFFLINE": "1",
            **{f"IMAGEGATE_{k.upper()}": v for k, v in settings.items()}}
    env.update(ours)

    def run(*args: str, stdin: str | None = None) -> Run:
        proc = subprocess.run([sys.executable, "-m", "imagegate", *args], env=env,
                              cwd=data_dir, input=stdin if stdin is not None else "",
                              capture_output=True, text=True, timeout=240)
        return Run(args, proc.returncode, proc.stdout, proc.stderr)

    def call(*args: str, stdin: str | None = None) -> Run:
        from typer.testing import CliRunner

        from imagegate.cli import app

        overrides: dict[str, str | None] = {k: None for k in os.environ
                                            if k.startswith("IMAGEGATE_")}
        overrides.update(ours)
        result = CliRunner().invoke(app, list(args), env=overrides, input=stdin or "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Run(args, result.exit_code, result.stdout, result.stderr)

    return call if in_process else run


def run_all(cli: Cli, *commands: tuple[str, ...]) -> list[Run]:
    return [cli(*args) for args in commands]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return make_cli(tmp_path)


def generate(server_url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server_url + "/v1/images/generations", json=IMAGE_BODY, headers=headers,
                      timeout=240)


def wait_for_status(server_url: str, key: str, status: int, seconds: float = 60) -> httpx.Response:
    """A running server trusts a verified key for auth_cache_seconds: poll until it notices."""
    deadline = time.monotonic() + seconds
    while True:
        got = httpx.get(server_url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                        timeout=10)
        if got.status_code == status or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def usage_rows(cli: Cli, *args: str) -> list[dict[str, str]]:
    """Usage as CSV rows (a charged request's row is written with its charge, at once)."""
    return list(csv.DictReader(io.StringIO(cli("usage", "--csv", *args).ok().stdout)))


# ---------------------------------------------------------------------------------------------


def test_help_lists_the_operator_commands(cli: Cli) -> None:
    words = cli("--help").ok().words
    for command in ("keys", "accounts", "usage", "db"):
        assert command in words


def test_db_upgrade_prints_the_url_without_its_password(cli: Cli, tmp_path: Path) -> None:
    first = cli("db", "upgrade").ok()
    assert first.stdout.startswith("sqlite+aiosqlite:///")
    assert str(tmp_path / "imagegate.db") in first.stdout
    assert "upgraded from revision (empty) to" in first.stdout
    assert (tmp_path / "imagegate.db").is_file()
    assert "already at revision" in cli("db", "upgrade").ok().stdout

    # Nothing listens on port 1: the error names the URL, never the password.
    broken = make_cli(tmp_path, in_process=True,
                      database_url="postgresql://ops:s3cret-pw@127.0.0.1:1/imagegate")
    for run in run_all(broken, ("db", "upgrade"), ("accounts", "list"), ("usage",)):
        run.failed("postgresql+asyncpg://ops:***@127.0.0.1:1/imagegate")
        assert "database  postgresql+asyncpg://ops:***@127.0.0.1:1/imagegate" in run.stderr
        assert "s3cret-pw" not in run.stderr


def test_config_file_names_the_database(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "imagegate.toml"
    config.write_text(f'database_url = "sqlite:///{(elsewhere / "ig.db").as_posix()}"\n'
                      'currency = "EUR"\n')
    cli = make_cli(tmp_path / "default", in_process=True)
    cli("accounts", "create", "acme", "--config", str(config)).ok()
    cli("accounts", "topup", "acme", "1.25", "--config", str(config)).ok()
    assert (elsewhere / "ig.db").is_file()
    assert "1.250000 EUR" in cli("accounts", "show", "acme", "--config", str(config)).ok().stdout
    cli("accounts", "show", "acme").failed("No account 'acme'")  # the default data dir


def test_accounts_round_trip(cli: Cli, tmp_path: Path) -> None:
    created = cli("accounts", "create", "acme").ok()
    assert "created account" in created.stderr and "prepaid" in created.stderr

    topped = cli("accounts", "topup", "acme", "12.50", "--note", "invoice 7").ok()
    assert "credited 12.500000 USD to acme: balance 12.500000 USD" in topped.words
    shown = cli("accounts", "show", "acme").ok().stdout
    assert "12.500000 USD" in shown and "prepaid" in shown
    info = cli("accounts", "show", "acme", "--json").json()
    assert info["balance_micros"] == 12_500_000 and isinstance(info["balance_micros"], int)
    assert info["currency"] == "USD" and info["unlimited"] is False
    assert info["held_micros"] == 0 and info["spent_micros"] == 0

    # Negative amounts correct a balance; they need no `--` in front of them.
    fixed = cli("accounts", "topup", "acme", "-2.5", "--note", "refund").ok()
    assert "debited 2.500000 USD from acme: balance 10.000000 USD" in fixed.words

    fast = make_cli(tmp_path, in_process=True)
    assert fast("accounts", "show", str(info["id"]), "--json").json()["balance_micros"] == 10**7
    fast("accounts", "topup", "acme", "0.000001").ok()  # one micro-unit: exact, no rounding
    fast("accounts", "create", "reseller", "--unlimited", "--price-multiplier", "0.8").ok()
    reseller = fast("accounts", "show", "reseller", "--json").json()
    assert reseller["unlimited"] is True and reseller["price_multiplier"] == "0.8"

    listed = cli("accounts", "list").ok().stdout
    assert "acme" in listed and "10.000001 USD" in listed and "reseller" in listed
    assert "unlimited" in listed
    assert [a["name"] for a in fast("accounts", "list", "--json").json()] == ["acme", "reseller"]

    failures = run_all(
        fast,
        ("accounts", "create", "acme"),
        ("accounts", "create", "12345"),
        ("accounts", "create", "bad", "--price-multiplier", "x"),
        ("accounts", "create", "bad", "--price-multiplier", "Infinity"),
        ("accounts", "topup", "acme", "abc"),
        ("accounts", "topup", "acme", "0.0000001"),
        ("accounts", "topup", "acme", "0"),
        ("accounts", "topup", "acme", "NaN"),
        ("accounts", "topup", "nobody", "1"),
        ("accounts", "show", "nobody"),
    )
    expected = ["exists already", "all digits", "not a valid price multiplier",
                "not a valid price multiplier", "not a decimal amount",
                "more than six decimal places", "must not be zero", "not a decimal amount",
                "No account 'nobody'", "No account 'nobody'"]
    for run, phrase in zip(failures, expected):
        run.failed(phrase)
    # None of the refused commands changed anything.
    assert fast("accounts", "show", "acme", "--json").json()["balance_micros"] == 10_000_001
    assert len(fast("accounts", "list", "--json").json()) == 2


def test_keys_commands(cli: Cli, tmp_path: Path) -> None:
    fast = make_cli(tmp_path, in_process=True)
    fast("accounts", "create", "team").ok()
    fast("accounts", "create", "other").ok()
    made = cli("keys", "create", "--account", "team", "--name", "ci", "--expires", "30d",
               "--model", "tiny-sd", "--ip", "10.0.0.0/8", "--ip", "127.0.0.1", "--rpm", "60",
               "--concurrency", "2", "--price-multiplier", "1.5").ok()
    lines = made.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-ig-")  # alone, for KEY=$(...)
    key = lines[0]
    assert key not in made.stderr and "shown only this once" in made.words
    assert key[:12] in made.stderr  # the prefix, to recognise it by later

    admin_key = fast("keys", "create", "-a", "team", "-n", "ops", "--admin").ok().stdout.strip()
    assert admin_key.startswith("sk-ig-") and admin_key != key
    warned = fast("keys", "create", "-a", "other", "-n", "typo", "--model", "no-such-model").ok()
    assert "no-such-model" in warned.stderr and "warning" in warned.stderr

    listed, as_json = cli("keys", "list"), cli("keys", "list", "--json")
    team_only, other_only = (fast("keys", "list", "--account", "team", "--json"),
                             fast("keys", "list", "--account", "other", "--json"))
    for run in (listed, as_json, team_only):
        assert key not in run.ok().stdout and admin_key not in run.stdout
    assert key[:12] + "…" in listed.stdout and "admin" in listed.stdout
    keys = as_json.json()
    assert [k["name"] for k in keys] == ["ci", "ops", "typo"]
    assert all("key" not in k and "key_hash" not in k for k in keys)
    ci = keys[0]
    assert ci["prefix"] == key[:12] and ci["state"] == "enabled" and ci["is_admin"] is False
    assert ci["allowed_models"] == ["tiny-sd"]
    assert ci["allowed_ips"] == ["10.0.0.0/8", "127.0.0.1"]
    assert (ci["rpm_limit"], ci["concurrency_limit"], ci["price_multiplier"]) == (60, 2, "1.5")
    expires = datetime.fromisoformat(ci["expires_at"])
    assert abs(expires - datetime.now(timezone.utc) - timedelta(days=30)) < timedelta(minutes=5)
    assert keys[1]["is_admin"] is True and keys[1]["expires_at"] is None
    assert [k["name"] for k in team_only.json()] == ["ci", "ops"]
    assert [k["name"] for k in other_only.json()] == ["typo"]

    # An ISO 8601 expiry with an offset is stored as the same instant in UTC.
    fast("keys", "create", "-a", "other", "-n", "tz", "--expires",
         "2999-01-01T05:00:00+05:00").ok()
    tz_key = fast("keys", "list", "--account", "other", "--json").json()[-1]
    assert tz_key["expires_at"] == "2999-01-01T00:00:00+00:00"

    assert "disabled" in fast("keys", "disable", str(ci["id"])).ok().stderr
    assert fast("keys", "list", "--json").json()[0]["state"] == "disabled"
    assert "enabled" in fast("keys", "enable", str(ci["id"])).ok().stderr
    assert fast("keys", "list", "--json").json()[0]["state"] == "enabled"

    typo_id = str(keys[2]["id"])
    fast("keys", "delete", typo_id).failed("without --yes")  # no terminal to ask on
    cli("keys", "delete", typo_id, stdin="y\n").failed("without --yes")
    assert len(fast("keys", "list", "--json").json()) == 4
    assert "deleted key" in fast("keys", "delete", typo_id, "--yes").ok().stderr
    assert [k["name"] for k in fast("keys", "list", "--json").json()] == ["ci", "ops", "tz"]

    failures = run_all(
        fast,
        ("keys", "delete", typo_id, "--yes"),
        ("keys", "disable", "999"),
        ("keys", "enable", "999"),
        ("keys", "create", "-a", "team", "-n", "x", "--ip", "10.0.0.0/33"),
        ("keys", "create", "-a", "nobody", "-n", "x"),
        ("keys", "create", "-a", "team", "-n", "x", "--expires", "2001-01-01T00:00:00Z"),
        ("keys", "create", "-a", "team", "-n", "x", "--expires", "soon"),
        ("keys", "create", "-a", "team", "-n", "x", "--rpm", "0"),
        ("keys", "create", "-a", "team", "-n", "x", "--concurrency", "0"),
        ("keys", "create", "-a", "team", "-n", "x", "--price-multiplier", "-1"),
        ("keys", "list", "--account", "nobody"),
    )
    expected = [f"No API key {typo_id}", "No API key 999", "No API key 999",
                "'10.0.0.0/33' is not an IP address or CIDR network", "No account 'nobody'",
                "in the past", "neither an ISO 8601 time", "--rpm must be at least 1",
                "--concurrency must be at least 1", "not a valid price multiplier",
                "No account 'nobody'"]
    for run, phrase in zip(failures, expected):
        run.failed(phrase)
    assert len(fast("keys", "list", "--json").json()) == 3


def test_key_from_the_cli_works_against_a_server(tmp_path: Path, start_server) -> None:
    cli, fast = make_cli(tmp_path), make_cli(tmp_path, in_process=True)
    fast("accounts", "create", "shop").ok()
    fast("accounts", "topup", "shop", "12.50").ok()
    key = cli("keys", "create", "-a", "shop", "-n", "app").ok().stdout.strip()
    key_id = fast("keys", "list", "--json").json()[0]["id"]

    # The server has its own data dir; the database is the CLI's SQLite file.
    server = start_server(config=PRICED_TINY_SD, auth="on", auth_cache_seconds="1",
                          database_url=f"sqlite:///{(tmp_path / 'imagegate.db').as_posix()}")
    assert generate(server.base_url, None).status_code == 401
    answer = generate(server.base_url, key)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 2
    request_id = answer.headers["x-request-id"]

    shop = fast("accounts", "show", "shop", "--json").json()
    assert shop["balance_micros"] == 12_480_000 and shop["spent_micros"] == 20_000
    assert "12.480000 USD" in fast("accounts", "show", "shop").ok().stdout

    rows = usage_rows(cli)
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] == request_id
    assert (row["key_id"], row["account_id"]) == (str(key_id), str(shop["id"]))
    assert (row["model"], row["n"], row["size"], row["images_delivered"]) == (
        "tiny-sd", "2", "64x64", "2")
    assert (row["cost_micros"], row["status"], row["error_code"]) == ("20000", "200", "")
    table = cli("usage").ok()
    assert "0.020000 USD" in table.stdout and request_id in table.stdout
    assert "1 requests, 2 images, 0.020000 USD" in table.words
    for args, count in ((("--key", str(key_id)), 1), (("--key", "999"), 0),
                        (("--since", "1h"), 1), (("--since", "2999-01-01"), 0),
                        (("--model", "tiny-sd"), 1), (("--model", "sd-turbo"), 0),
                        (("--account", "shop"), 1)):
        assert len(usage_rows(fast, *args)) == count, args
    fast("usage", "--since", "yesterday").failed("neither an ISO 8601 time")
    fast("usage", "--account", "nobody").failed("No account 'nobody'")

    cli("keys", "disable", str(key_id)).ok()
    refused = wait_for_status(server.base_url, key, 401)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    fast("keys", "enable", str(key_id)).ok()
    assert wait_for_status(server.base_url, key, 200).status_code == 200
    fast("keys", "delete", str(key_id), "--yes").ok()
    refused = wait_for_status(server.base_url, key, 401)
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_postgres_round_trip(tmp_path: Path, pg_url: str, start_server) -> None:
    cli = make_cli(tmp_path, database_url=pg_url)
    fast = make_cli(tmp_path, in_process=True, database_url=pg_url)
    upgraded = cli("db", "upgrade").ok().stdout
    assert upgraded.startswith("postgresql+asyncpg://") and "upgraded from" in upgraded
    fast("accounts", "create", "pg-shop").ok()
    fast("accounts", "topup", "pg-shop", "12.50").ok()
    assert fast("accounts", "show", "pg-shop", "--json").json()["balance_micros"] == 12_500_000
    key = cli("keys", "create", "-a", "pg-shop", "-n", "app", "--model", "tiny-sd").ok().stdout
    key = key.strip()
    assert key[:12] in fast("keys", "list").ok().stdout

    server = start_server(config=PRICED_TINY_SD, auth="on", database_url=pg_url)
    answer = generate(server.base_url, key)
    assert answer.status_code == 200, answer.text
    assert "12.480000 USD" in fast("accounts", "show", "pg-shop").ok().stdout
    rows = usage_rows(cli, "--account", "pg-shop")
    assert [(r["request_id"], r["cost_micros"]) for r in rows] == [
        (answer.headers["x-request-id"], "20000")]
    key_id = fast("keys", "list", "--json").json()[0]["id"]
    fast("keys", "disable", str(key_id)).ok()
    assert fast("keys", "list", "--json").json()[0]["state"] == "disabled"
