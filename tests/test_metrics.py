"""`/metrics` and `/health` in-process: the series prometheus-client writes for the local engine
(label values escaped, whatever a model is called), one registry per app, and a custom provider
as the `local` backend that has nothing to report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ODD_NAME = 'tiny "quoted" \\ back\nslash'
"""A model name with each character the text format must escape in a label value."""


def _samples(text: str, family: str) -> dict[str, float]:
    """Model label -> value of `family`'s samples, as a Prometheus parser reads them."""
    for found in text_string_to_metric_families(text):
        if found.name == family:
            return {sample.labels["model"]: sample.value for sample in found.samples}
    raise AssertionError(f"{family} missing from /metrics:\n{text}")


async def test_label_values_are_escaped(inprocess: Any, tiny_models_dir: Path) -> None:
    srv = await inprocess(models={ODD_NAME: {"backend": "local", "local": {
        "source": str(tiny_models_dir / "tiny-sd")}}}, preload=[ODD_NAME])
    response = await srv.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert 'model="tiny \\"quoted\\" \\\\ back\\nslash"' in text  # one line per sample
    assert _samples(text, "imagegate_engine_waiting") == {ODD_NAME: 0}
    assert _samples(text, "imagegate_engine_loads")  # a counter: its family name drops _total
    for name, kind in (("imagegate_engine_running", "gauge"),
                       ("imagegate_engine_jobs_total", "counter"),
                       ("imagegate_engine_unloads_total", "counter")):
        assert f"# TYPE {name} {kind}\n" in text


async def test_each_app_has_its_own_series(inprocess: Any, tiny_models_dir: Path) -> None:
    preloaded = await inprocess(models={"tiny-a": {"backend": "local", "local": {
        "source": str(tiny_models_dir / "tiny-sd")}}}, preload=["tiny-a"])
    idle = await inprocess()
    assert "tiny-a" in _samples((await preloaded.client.get("/metrics")).text,
                                "imagegate_engine_loaded")
    text = (await idle.client.get("/metrics")).text
    assert _samples(text, "imagegate_engine_loaded") == {}  # no worker, no series
    assert "# HELP imagegate_engine_loaded 1 while the model's pipeline is in memory.\n" in text


class PlainLocal:
    """A provider written against the `Provider` methods alone, registered as `local`."""

    name = "plain"

    def __init__(self, settings: Any) -> None:
        pass

    def describe(self, spec: Any) -> dict[str, Any]:
        return {"plain": True}

    async def generate(self, spec: Any, request: Any, progress: Any = None) -> Any:
        raise AssertionError("not called")

    async def aclose(self) -> None:
        pass


async def test_a_provider_without_reports_has_nothing_to_report(inprocess: Any) -> None:
    srv = await inprocess(config='[providers]\nlocal = "test_metrics:PlainLocal"\n')
    health = (await srv.client.get("/health")).json()
    assert health["status"] == "ok" and "loading" not in health
    assert health["models"]["tiny-sd"] == {"plain": True}
    ready = await srv.client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert _samples((await srv.client.get("/metrics")).text, "imagegate_engine_waiting") == {}
