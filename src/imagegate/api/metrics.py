"""`GET /metrics`: the local engine's queues and loaded models in Prometheus' text format.

prometheus-client writes the text (label values escaped, the content type it speaks); the
numbers are read from the engine when Prometheus scrapes, by a collector registered in a
registry of the app's own, so two apps in one process (tests) never share series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..providers.base import EngineStats
from ..service import ImageService
from . import deps

router = APIRouter(tags=["metrics"])

# name, help, type, value from a model's stats
_SERIES: tuple[tuple[str, str, str, Callable[[EngineStats], float]], ...] = (
    ("imagegate_engine_waiting", "Requests waiting for the model's worker.", "gauge",
     lambda s: s.waiting),
    ("imagegate_engine_running", "1 while the model's worker runs a job.", "gauge",
     lambda s: int(s.running)),
    ("imagegate_engine_batch_images", "Images in the pipeline call running now.", "gauge",
     lambda s: s.batch_images),
    ("imagegate_engine_batches_total", "Pipeline calls that served more than one request.",
     "counter", lambda s: s.batches),
    ("imagegate_engine_step_seconds", "Running average of one denoising step.", "gauge",
     lambda s: s.step_seconds),
    ("imagegate_engine_job_seconds", "Running average of one job.", "gauge",
     lambda s: s.job_seconds),
    ("imagegate_engine_jobs_total", "Jobs finished.", "counter", lambda s: s.jobs_done),
    ("imagegate_engine_jobs_cancelled_total", "Jobs dropped or stopped because the client left.",
     "counter", lambda s: s.jobs_cancelled),
    ("imagegate_engine_rejected_total", "Requests refused with 429 because the queue was full.",
     "counter", lambda s: s.rejected),
    ("imagegate_engine_loaded", "1 while the model's pipeline is in memory.", "gauge",
     lambda s: int(s.loaded)),
    ("imagegate_engine_memory_bytes", "Estimated bytes of the loaded model's weights.", "gauge",
     lambda s: s.memory_bytes),
    ("imagegate_engine_loads_total", "Times the model was loaded.", "counter",
     lambda s: s.loads),
    ("imagegate_engine_unloads_total", "Times the model was unloaded (memory budget).",
     "counter", lambda s: s.unloads),
)


class EngineCollector(Collector):
    """The `imagegate_engine_*` series, one per model, read from `stats` at each scrape."""

    def __init__(self, stats: Callable[[], dict[str, EngineStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        models = sorted(self._stats().items())
        for name, help_text, kind, value in _SERIES:
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=["model"])
            else:
                family = GaugeMetricFamily(name, help_text, labels=["model"])
            for model, stats in models:
                family.add_metric([model], value(stats))
            yield family


_registries: WeakKeyDictionary[object, CollectorRegistry] = WeakKeyDictionary()
"""App -> its registry (which holds the app's service, never the app: an app that is gone takes
its registry with it)."""


def registry(app: object, service: ImageService) -> CollectorRegistry:
    """The app's registry of metrics, made at its first scrape."""
    found = _registries.get(app)
    if found is None:
        found = CollectorRegistry(auto_describe=False)
        found.register(EngineCollector(service.engine_stats))
        _registries[app] = found
    return found


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(registry(request.app, deps.service(request))),
                    media_type=CONTENT_TYPE_LATEST)
