"""`GET /metrics`: the local engine's queues and loaded models in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from ..service import ImageService
from . import deps

router = APIRouter(tags=["metrics"])

# name, help, type, value from a worker
_SERIES = (
    ("imagegate_engine_waiting", "Requests waiting for the model's worker.", "gauge",
     lambda w: w.pending),
    ("imagegate_engine_running", "1 while the model's worker runs a job.", "gauge",
     lambda w: int(w.stats.running)),
    ("imagegate_engine_batch_images", "Images in the pipeline call running now.", "gauge",
     lambda w: w.stats.batch_images),
    ("imagegate_engine_batches_total", "Pipeline calls that served more than one request.",
     "counter", lambda w: w.stats.batches),
    ("imagegate_engine_step_seconds", "Running average of one denoising step.", "gauge",
     lambda w: w.stats.step_seconds),
    ("imagegate_engine_job_seconds", "Running average of one job.", "gauge",
     lambda w: w.stats.job_seconds),
    ("imagegate_engine_jobs_total", "Jobs finished.", "counter", lambda w: w.stats.jobs_done),
    ("imagegate_engine_jobs_cancelled_total", "Jobs dropped or stopped because the client left.",
     "counter", lambda w: w.stats.jobs_cancelled),
    ("imagegate_engine_rejected_total", "Requests refused with 429 because the queue was full.",
     "counter", lambda w: w.stats.rejected),
    ("imagegate_engine_loaded", "1 while the model's pipeline is in memory.", "gauge",
     lambda w: int(w.loaded)),
    ("imagegate_engine_memory_bytes", "Estimated bytes of the loaded model's weights.", "gauge",
     lambda w: w.memory_bytes),
    ("imagegate_engine_loads_total", "Times the model was loaded.", "counter",
     lambda w: w.stats.loads),
    ("imagegate_engine_unloads_total", "Times the model was unloaded (memory budget).",
     "counter", lambda w: w.stats.unloads),
)


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
async def metrics(service: ImageService = Depends(deps.service)) -> PlainTextResponse:
    local = service.providers.get("local")
    workers = local.workers() if local is not None and hasattr(local, "workers") else {}
    lines: list[str] = []
    for name, help_text, kind, value in _SERIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for model, worker in sorted(workers.items()):
            lines.append(f'{name}{{model="{model}"}} {value(worker)}')
    return PlainTextResponse("\n".join(lines) + "\n",
                             media_type="text/plain; version=0.0.4; charset=utf-8")
