"""A database that cannot be reached (down, refusing connections, out of connection slots) is
the server's trouble, not the client's: 503 `database_unavailable` with a Retry-After, in
OpenAI's envelope, and the server answers normally again once the database is back."""

from __future__ import annotations

from typing import Any


async def _allow_connections(admin_dsn: str, database: str, allow: bool) -> None:
    """Open or close `database` to every new connection (superusers' too), and end the open
    ones when closing it."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
    finally:
        await conn.close()


async def test_an_unreachable_database_answers_503_database_unavailable(
        inprocess: Any, pg_url: str) -> None:
    prefix, _, database = pg_url.rpartition("/")
    admin_dsn = f"{prefix}/postgres"
    srv = await inprocess(database_url=pg_url, auth_cache_seconds=0)  # every request reads keys
    assert (await srv.client.get("/v1/models", headers=srv.auth())).status_code == 200

    await _allow_connections(admin_dsn, database, False)
    try:
        refused = await srv.client.get("/v1/models", headers=srv.auth())
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "database_unavailable")
        assert "Traceback" not in refused.text and database not in error["message"]
        assert refused.headers["x-should-retry"] == "true"
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        await _allow_connections(admin_dsn, database, True)

    again = await srv.client.get("/v1/models", headers=srv.auth())
    assert again.status_code == 200, again.text
