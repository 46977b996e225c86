"""The docs name everything the code offers: every setting, every error code, every endpoint.

Fast and in-process: settings come from the `Settings` model, error codes from the source's
syntax tree (so a string in a comment does not count), endpoints from the app's routes (built
without running its lifespan). Each test lists what is missing, so adding a setting, a code or
a route without documenting it fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from imagegate.settings import FLAT_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "imagegate"

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
FRAMEWORK_PATHS = {"/docs", "/openapi.json", "/docs/oauth2-redirect"}


def _section(text: str, heading: str) -> str:
    """The text under `heading` (a whole line, e.g. "## Errors") up to the next heading of the
    same or a higher level; "" when there is no such heading."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    out: list[str] = []
    inside = False
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            line_level = len(line) - len(line.lstrip("#"))
            if inside and line_level <= level:
                break
            if line.rstrip() == heading:
                inside = True
                continue
        if inside:
            out.append(line)
    return "\n".join(out)


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("|")]


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


# ---- settings ------------------------------------------------------------------------------


def _documented_settings(text: str) -> dict[str, str]:
    """TOML key (dotted for a group's: `fetch.max_bytes`) -> environment variable cell of the
    tables under "## Settings"."""
    rows: dict[str, str] = {}
    for row in _table_rows(_section(text, "## Settings")):
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        key = re.fullmatch(r"`([a-z_][a-z0-9_.]*)`", cells[0])
        if key:
            rows[key.group(1)] = cells[1]
    return rows


def _code_settings() -> dict[str, str]:
    """Every setting in the code, TOML key -> its environment variable: the top-level fields
    that are not groups, and every grouped field under its flat name."""
    groups = set(FLAT_NAMES_GROUPS)
    settings = {name: f"IMAGEGATE_{name.upper()}" for name in Settings.model_fields
                if name not in groups}
    settings.update({".".join(path): f"IMAGEGATE_{flat.upper()}"
                     for flat, path in FLAT_NAMES.items()})
    return settings


FLAT_NAMES_GROUPS = {path[0] for path in FLAT_NAMES.values()}


def test_every_setting_is_in_the_settings_table() -> None:
    documented = _documented_settings((DOCS / "configuration.md").read_text())
    assert documented, "docs/configuration.md has no settings table under '## Settings'"
    code = _code_settings()
    missing = sorted(name for name in code if name not in documented)
    assert not missing, f"settings missing from docs/configuration.md's table: {missing}"
    wrong_env = sorted(name for name, env in code.items() if f"`{env}`" not in documented[name])
    assert not wrong_env, f"settings whose row does not name their variable: {wrong_env}"


def test_the_settings_table_names_no_setting_that_does_not_exist() -> None:
    documented = _documented_settings((DOCS / "configuration.md").read_text())
    stale = sorted(set(documented) - set(_code_settings()))
    assert not stale, f"docs/configuration.md documents settings the code lacks: {stale}"


# ---- error codes ---------------------------------------------------------------------------


def _source_trees() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _base_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def _class_code(node: ast.ClassDef) -> str | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        else:
            continue
        if (any(isinstance(t, ast.Name) and t.id == "code" for t in targets)
                and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
            return stmt.value.value
    return None


def code_error_codes() -> dict[str, str]:
    """Every error code the source can send -> where it was found.

    Class-level `code = "..."` on `APIError` and its subclasses (followed by name across
    modules), and string constants passed as `code="..."` to any call."""
    trees = list(_source_trees())
    classes: list[tuple[Path, ast.ClassDef]] = [
        (path, node) for path, tree in trees for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]
    error_classes = {"APIError"}
    grown = True
    while grown:
        grown = False
        for _, node in classes:
            if node.name not in error_classes and _base_names(node) & error_classes:
                error_classes.add(node.name)
                grown = True
    found: dict[str, str] = {}
    for path, node in classes:
        code = _class_code(node) if node.name in error_classes else None
        if code:
            found.setdefault(code, f"{path.relative_to(ROOT)}: class {node.name}")
    for path, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if (keyword.arg == "code" and isinstance(keyword.value, ast.Constant)
                        and isinstance(keyword.value.value, str)):
                    found.setdefault(keyword.value.value,
                                     f"{path.relative_to(ROOT)}:{keyword.value.lineno}")
    return found


# Class-level codes that are never sent: every raise of these classes names its own code (checked
# below), so documenting them would describe nothing a client can see.
OVERRIDDEN_DEFAULTS = {"forbidden": "Forbidden", "permission_denied": "PermissionDenied"}


def sent_error_codes() -> dict[str, str]:
    return {code: where for code, where in code_error_codes().items()
            if code not in OVERRIDDEN_DEFAULTS}


def test_overridden_defaults_are_always_overridden() -> None:
    """Each class in OVERRIDDEN_DEFAULTS is only ever raised with `code="..."`, and has no
    subclass; otherwise its default reaches clients and belongs in the docs."""
    classes = set(OVERRIDDEN_DEFAULTS.values())
    for path, tree in _source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert not _base_names(node) & classes, f"{path}: {node.name} subclasses one"
            if isinstance(node, ast.Call) and (
                    (isinstance(node.func, ast.Name) and node.func.id in classes)
                    or (isinstance(node.func, ast.Attribute) and node.func.attr in classes)):
                assert any(k.arg == "code" for k in node.keywords), (
                    f"{path}:{node.lineno} raises its class's default code: document it in docs/")


def documented_error_codes() -> set[str]:
    """Backticked names in the rows of the error tables of api.md, billing.md and
    providers.md."""
    codes: set[str] = set()
    for name in ("api.md", "billing.md", "providers.md"):
        errors = _section((DOCS / name).read_text(), "## Errors")
        assert errors, f"docs/{name} has no '## Errors' section"
        for row in _table_rows(errors):
            codes |= _backticked(row)
    return codes


def test_code_error_codes_are_found() -> None:
    """The collector itself works: it sees codes set in both ways."""
    codes = code_error_codes()
    assert "model_not_found" in codes  # class-level, errors.py
    assert "invalid_json" in codes  # a keyword argument
    assert len(codes) > 20


def test_every_error_code_is_in_an_error_table() -> None:
    documented = documented_error_codes()
    missing = {code: where for code, where in sent_error_codes().items()
               if code not in documented}
    assert not missing, (
        "error codes missing from the '## Errors' tables of docs/api.md, billing.md, providers.md: "
        + ", ".join(f"{code} ({where})" for code, where in sorted(missing.items()))
    )


# ---- endpoints -----------------------------------------------------------------------------


def _walk_routes(routes: Iterable[object], prefix: str = "",
                 in_schema: bool = True) -> Iterator[tuple[str, set[str], bool]]:
    """(path, methods, in_schema) of every route, descending into included routers however
    this FastAPI version keeps them (flattened, or as included-router entries)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            context = route.include_context  # type: ignore[attr-defined]
            yield from _walk_routes(original.routes, prefix + (context.prefix or ""),
                                    in_schema and context.include_in_schema is not False)
            continue
        path = getattr(route, "path", None)
        if path is None:
            continue
        methods = set(getattr(route, "methods", None) or ())
        yield (prefix + path, methods,
               in_schema and getattr(route, "include_in_schema", True) is not False)


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def app_endpoints(tmp_path: Path) -> set[str]:
    from imagegate.app import create_app

    app = create_app(Settings(data_dir=tmp_path, auth="on"))  # the lifespan never runs
    routes = list(_walk_routes(app.router.routes))
    paths = {path for path, _, _ in routes}
    endpoints = set()
    for path, methods, in_schema in routes:
        if path in FRAMEWORK_PATHS:
            continue
        if not in_schema and not path.startswith("/v1/") and f"/v1{path}" in paths:
            continue  # the un-prefixed alias of a /v1 route
        for method in methods:
            if method in HTTP_METHODS:  # HEAD comes with GET
                endpoints.add(f"{method} {_normalise(path)}")
    return endpoints


def documented_endpoints() -> set[str]:
    found = set()
    pattern = re.compile(r"\b(" + "|".join(HTTP_METHODS) + r") (/[^\s`|,)?]*)")
    for doc in sorted(DOCS.glob("*.md")):
        for method, path in pattern.findall(doc.read_text()):
            found.add(f"{method} {_normalise(path)}")
    return found


def test_app_endpoints_are_found(tmp_path: Path) -> None:
    endpoints = app_endpoints(tmp_path)
    assert "POST /v1/images/generations" in endpoints
    assert "GET /v1/media/{}" in endpoints
    assert "POST /admin/keys" in endpoints
    assert "POST /images/generations" not in endpoints  # an alias
    assert not any(e.split(" ", 1)[1] in FRAMEWORK_PATHS for e in endpoints)


def test_every_endpoint_is_in_the_docs(tmp_path: Path) -> None:
    missing = sorted(app_endpoints(tmp_path) - documented_endpoints())
    assert not missing, f"endpoints not written as `METHOD /path` anywhere in docs/: {missing}"


# ---- modules ------------------------------------------------------------------------------


def _module_table() -> set[str]:
    """The paths (relative to src/imagegate/) in the first column of the table under
    docs/architecture.md's "## Modules"; a folder ends with `/`."""
    names: set[str] = set()
    for row in _table_rows(_section((DOCS / "architecture.md").read_text(), "## Modules")):
        names |= _backticked(row.strip().strip("|").split("|")[0])
    return names


def _holds_something(init: Path) -> bool:
    """Whether a package's __init__.py holds more than its docstring and re-exports."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
            continue
        return True
    return False


def test_every_module_is_in_the_module_table() -> None:
    listed = _module_table()
    assert listed, "docs/architecture.md has no module table under '## Modules'"
    folders = tuple(name for name in listed if name.endswith("/"))
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if name in listed or name.startswith(folders):
            continue
        if path.name == "__init__.py" and not _holds_something(path):
            continue  # a package's docstring, and what it re-exports
        missing.append(name)
    assert not missing, f"modules missing from docs/architecture.md's module table: {missing}"


def test_the_module_table_names_no_module_that_does_not_exist() -> None:
    stale = sorted(name for name in _module_table() if not (SRC / name).exists())
    assert not stale, f"docs/architecture.md's module table names what src/ lacks: {stale}"


@pytest.mark.parametrize("heading", ["## Errors", "## Settings"])
def test_section_stops_at_the_next_heading(heading: str) -> None:
    text = f"intro\n{heading}\n| `a` |\n```\n# not a heading\n```\n| `b` |\n## Next\n| `c` |\n"
    assert _backticked(_section(text, heading)) == {"a", "b"}
