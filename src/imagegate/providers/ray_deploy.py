"""Putting the local engine on a Ray cluster: one Serve application per local model, from the
same settings the gateway reads (`imagegate engine deploy`), or a Serve config file that says
the same for `serve deploy` (`imagegate engine config`)."""

from __future__ import annotations

from typing import Any

from ..catalog import Catalog, ModelSpec
from ..errors import APIError
from ..settings import Settings
from .ray_replica import BUILD_APP, app_args, app_name, build_app


def engine_models(settings: Settings, names: list[str]) -> list[ModelSpec]:
    """The models named (each must be a served local model), or, none named, every served local
    model whose weights are on this host (or, tiny-sd, can be built)."""
    from ..engine.weights import locate

    catalog = Catalog.from_config(settings.models, _any_backend(settings))
    if not names:
        return [spec for spec in catalog.served() if spec.backend == "local"
                and locate(spec, settings.resolved_models_dir).usable]
    specs = []
    for name in names:
        try:
            spec = catalog.get(name)
        except APIError:
            raise ValueError(f"`{name}` is not a served model (unknown or disabled)") from None
        if spec.backend != "local":
            raise ValueError(f"`{name}` is not a local model (backend {spec.backend!r})")
        specs.append(spec)
    return specs


def _any_backend(settings: Settings) -> set[str]:
    """Every backend the configuration names: models of custom providers are not deployed, but
    must not stop the catalog from loading."""
    return {"local", "upstream", *settings.providers}


def serve_config(settings: Settings, specs: list[ModelSpec]) -> dict[str, Any]:
    """A Serve config file (`serve deploy FILE`): no HTTP proxy (gateways call the
    applications through handles), one application per model."""
    return {"proxy_location": "Disabled",
            "applications": [{"name": app_name(settings, spec.name), "route_prefix": None,
                              "import_path": BUILD_APP, "args": app_args(settings, spec)}
                             for spec in specs]}


def deploy(settings: Settings, specs: list[ModelSpec]) -> list[str]:
    """Deploy (or update) each model's application on the cluster at `engine.ray.address`
    and wait until its replicas are up; returns the applications' names. The engine keeps
    running when this process exits."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=settings.engine.ray.address or "auto", log_to_driver=False)
    serve.start(proxy_location="Disabled")  # (no-op where Serve already runs)
    names = []
    for spec in specs:
        name = app_name(settings, spec.name)
        serve.run(build_app(app_args(settings, spec)), name=name, route_prefix=None)
        names.append(name)
    return names
