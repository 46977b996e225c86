"""Prompt moderation, before any provider is called or any money reserved.

Two layers, both optional: an operator's word and pattern lists (per language, matched
case-insensitively; words match whole words in scripts with spaces and as substrings in scripts
without, such as Chinese and Japanese), and an OpenAI-compatible `/moderations` endpoint. A
rejection is 400 `content_policy_violation` and costs nothing.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import APIError

log = logging.getLogger(__name__)

REJECTION = ("Your request was rejected by this server's content policy. Your prompt may contain "
             "text that is not allowed.")


class ContentPolicyViolation(APIError):
    status = 400
    code = "content_policy_violation"


class ModerationEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    """Base URL of an OpenAI-compatible API; `/moderations` is appended."""
    api_key_env: str | None = None
    model: str = "omni-moderation-latest"
    timeout_seconds: float = 10.0
    fail_open: bool = False
    """When the endpoint is down: False refuses the request (502), True lets it through."""


class ModerationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    words: dict[str, list[str]] = Field(default_factory=dict)
    """Language -> words or phrases to refuse, e.g. {en = ["..."], zh = ["..."]}."""
    patterns: dict[str, list[str]] = Field(default_factory=dict)
    """Language -> regular expressions to refuse."""
    endpoint: ModerationEndpoint | None = None

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for patterns in value.values():
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"moderation pattern {pattern!r} is invalid: {exc}") from None
        return value


# Letters of scripts written with spaces; CJK characters next to a word are not part of it.
_WORD_CHAR = r"[A-Za-z0-9_\u00C0-\u024F\u0400-\u04FF]"


def _has_spaces(word: str) -> bool:
    """Scripts written with spaces get whole-word matching; CJK and the like get substrings."""
    return bool(re.search(r"[A-Za-z0-9À-ɏЀ-ӿ]", word))


class Moderator:
    def __init__(self, settings: ModerationSettings,
                 client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        rules: list[re.Pattern[str]] = []
        for words in settings.words.values():
            for word in words:
                escaped = re.escape(word.strip())
                if escaped:
                    bounded = rf"(?<!{_WORD_CHAR}){escaped}(?!{_WORD_CHAR})"
                    rules.append(re.compile(bounded if _has_spaces(word) else escaped,
                                            re.IGNORECASE))
        for patterns in settings.patterns.values():
            rules.extend(re.compile(p, re.IGNORECASE) for p in patterns)
        self._rules = rules
        self._client = client  # made on first use of the endpoint, closed by aclose()

    @property
    def active(self) -> bool:
        return bool(self._rules) or self.settings.endpoint is not None

    async def check(self, prompt: str) -> None:
        """Raise 400 content_policy_violation when the prompt is refused."""
        prompt = unicodedata.normalize("NFKC", prompt)  # full-width letters are letters
        if any(rule.search(prompt) for rule in self._rules):
            raise ContentPolicyViolation(REJECTION)
        if self.settings.endpoint is not None and prompt.strip():
            if await self._flagged_by_endpoint(prompt, self.settings.endpoint):
                raise ContentPolicyViolation(REJECTION)

    async def _flagged_by_endpoint(self, prompt: str, endpoint: ModerationEndpoint) -> bool:
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False)
        client = self._client
        try:
            response = await client.post(
                endpoint.url.rstrip("/") + "/moderations",
                json={"model": endpoint.model, "input": prompt},
                headers={"authorization": f"Bearer {key}"} if key else {},
                timeout=endpoint.timeout_seconds)
            response.raise_for_status()
            results: Any = response.json().get("results")
            if not isinstance(results, list) or not results or not all(
                    isinstance(r, dict) and isinstance(r.get("flagged"), bool) for r in results):
                raise ValueError("the moderation answer carries no verdict")
            return any(r["flagged"] for r in results)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("moderation endpoint unavailable: %s", type(exc).__name__)
            if endpoint.fail_open:
                return False
            raise APIError("The moderation service is unavailable; retry later.", status=502,
                           type="upstream_error", code="moderation_unavailable") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
