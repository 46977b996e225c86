"""schemathesis against a live `imagegate serve`: every operation of its own /openapi.json, with
keys on, is sent schema-valid and schema-invalid requests, and every answer must be documented
(status, content type, body schema), never a 5xx, and every error in OpenAI's envelope.

Bounded for CI on a small machine: a fixed number of examples per operation, derandomized (the
same requests on every run), and a served tiny-sd whose own limits keep accepted generations
small (64 to 128 pixels a side, at most 2 images of at most 2 steps), so what the schema allows
but the model does not is answered 400 at once.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

ADMIN_KEY = "sk-admin-schemathesis-0123456789abcdef"
MODEL = "tiny-sd"
EXAMPLES = 60
"""Per operation and generation mode (schema-valid, schema-invalid)."""

SMALL_TINY_SD = {MODEL: {
    "capabilities": {"default_size": "64x64", "max_n": 2, "max_steps": 2,
                     "size_rule": {"multiple_of": 8, "min_edge": 64, "max_edge": 128}},
    "local": {"default_steps": 1, "quality_steps": {"low": 1, "medium": 1, "high": 2}},
    "pricing": {"per_image": "0.01"},
}}

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]

LAST = ("POST /admin/keys/{key_id}/disable", "DELETE /admin/keys/{key_id}",
        "PATCH /admin/keys/{key_id}")
"""Run after everything else, in this order: they may take a key (the user's, or an admin's)
away; the last may fence the admin key in by IP address, and every request after it is 403."""


@pytest.fixture(scope="module")
def live(start_server) -> dict[str, Any]:
    server = start_server(auth="on", admin_key=ADMIN_KEY, default_model=MODEL,
                          models=json.dumps(SMALL_TINY_SD))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=admin, timeout=240) as http:
        assert http.post("/admin/accounts", json={"name": "fuzz"}).status_code == 201
        topup = http.post("/admin/accounts/fuzz/topup", json={"amount": "1000000"})
        assert topup.status_code == 200, topup.text
        key = http.post("/admin/keys", json={"account": "fuzz", "name": "fuzz-user"})
        assert key.status_code == 201, key.text
        warm = http.post("/v1/images/generations", json={"prompt": "warm up"},
                         headers={"Authorization": f"Bearer {key.json()['key']}"})
        assert warm.status_code == 200, warm.text
    return {"server": server, "user_key": key.json()["key"]}


def _envelope_problem(response: schemathesis.Response) -> str | None:
    """Why an error response is not OpenAI's envelope, or None when it is (or is no error)."""
    if response.status_code < 400 or response.request.path_url == "/health/ready":
        return None  # (a readiness probe's 503 has its own documented body)
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if set(body) != {"error"} or not isinstance(error, dict):
        return f"not {{'error': {{...}}}}: {response.text[:300]}"
    if set(error) != {"message", "type", "param", "code"}:
        return f"error keys {sorted(error)}: {response.text[:300]}"
    if not isinstance(error["message"], str) or not error["message"]:
        return f"no message: {response.text[:300]}"
    return None


def _report(case: schemathesis.Case, response: schemathesis.Response | None, why: str) -> str:
    got = "" if response is None else f"\n  -> {response.status_code} {response.text[:300]}"
    return f"{why.strip()[:300]}\n  {case.as_curl_command()[:1500]}{got}"


def _problems(case: schemathesis.Case, headers: dict[str, str],
              statuses: Counter[int]) -> dict[str, str]:
    """What is wrong with the server's answer to one case: {kind of failure: report}."""
    response = None
    try:
        response = case.call(headers=headers, timeout=240)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
    except FailureGroup as group:  # the checks that failed
        return {failure.title: _report(case, response, str(failure))
                for failure in group.exceptions}
    except Exception as exc:  # noqa: BLE001 - a transport error is a finding too
        return {type(exc).__name__: _report(case, response, str(exc))}
    problem = _envelope_problem(response)
    return {"Error outside the envelope": _report(case, response, problem)} if problem else {}


def _exercise(operation: schemathesis.APIOperation, mode: GenerationMode,
              headers: dict[str, str], statuses: Counter[int]) -> dict[str, str]:
    """The first example of each kind of failure found for one operation in one mode."""
    found: dict[str, str] = {}

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        for kind, report in _problems(case, headers, statuses).items():
            found.setdefault(kind, report)

    try:
        run()
    except Unsatisfiable:  # no parameter or body to make invalid (schema-invalid mode only)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return found


def test_every_operation_answers_as_documented(live: dict[str, Any]) -> None:
    server = live["server"]
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    schema.config.output.sanitization.update(enabled=False)  # test keys: show requests whole
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: LAST.index(op.label) + 1 if op.label in LAST else 0)
    assert len(operations) >= 15, [op.label for op in operations]

    failures, seen = [], {}
    for operation in operations:
        key = ADMIN_KEY if operation.path.startswith("/admin") else live["user_key"]
        headers = {"Authorization": f"Bearer {key}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            statuses: Counter[int] = Counter()
            for kind, report in _exercise(operation, mode, headers, statuses).items():
                failures.append(f"{operation.label} [{mode.value}] {kind}: {report}")
            seen[f"{operation.label} [{mode.value}]"] = dict(sorted(statuses.items()))
    print("\n".join(f"{label}: {statuses}" for label, statuses in seen.items()))
    assert not failures, "\n\n".join(failures)
    # Meaningful: schema-valid requests got through to generating images.
    assert seen["POST /v1/images/generations [positive]"].get(200), seen
