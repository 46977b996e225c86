"""`imagegate verify FILE...`: the AI-content labels an image file carries (GB 45438-2025's
implicit label, C2PA content credentials, the visible mark imagegate recorded drawing), read
back the way an outside reader would, and said plainly when there are none.

Exit status: 0 when every file carries a label, 1 when one carries none (or its credentials
do not validate), 2 when one cannot be read as an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..labels.errors import LabelError
from ..labels.inspect import inspect_file
from .common import console

_LABEL_MEANINGS = {"1": "AI-generated", "2": "possibly AI-generated", "3": "suspected"}


def verify(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                       help="PNG, JPEG or WebP files."),
    as_json: bool = typer.Option(False, "--json", help="One JSON report per file."),
    trust_anchors: Optional[Path] = typer.Option(
        None, "--trust-anchors", exists=True, dir_okay=False,
        help="PEM root certificates to trust for C2PA signatures (e.g. your own CA)."),
) -> None:
    """Read back the AI-content labels of image files."""
    anchors = trust_anchors.read_bytes() if trust_anchors else None
    worst = 0
    reports: list[dict[str, Any]] = []
    for path in files:
        try:
            report = inspect_file(path.read_bytes(), trust_anchors=anchors)
        except LabelError as exc:
            worst = 2
            reports.append({"file": str(path), "error": str(exc)})
            if not as_json:
                console.print(f"[bold]{path}[/]: not a PNG, JPEG or WebP file that can be read "
                              f"({exc})")
            continue
        labelled = bool(report["implicit_labels"]) or report["credentials"] is not None
        credentials_ok = report["credentials"] is None or report["credentials"]["valid"]
        if not labelled or not credentials_ok:
            worst = max(worst, 1)
        reports.append({"file": str(path), **report})
        if not as_json:
            _print(path, report)
    if as_json:
        typer.echo(json.dumps(reports if len(reports) > 1 else reports[0], ensure_ascii=False,
                              indent=2, default=str))
    raise typer.Exit(worst)


def _print(path: Path, report: dict[str, Any]) -> None:
    out = console.print
    out(f"[bold]{path}[/]: {report['format'].upper()}, {report['width']}x{report['height']}")
    labels = report["implicit_labels"]
    if not labels and report["credentials"] is None and report["visible_mark"] is None:
        out("  No AI-content label: no GB 45438-2025 implicit label (TC260 AIGC), no C2PA "
            "content credentials, no record of a visible mark.")
    if labels:
        count = "" if len(labels) == 1 else \
            f" ({len(labels)} labels: GB 45438-2025 asks for exactly one)"
        out(f"  Implicit label (GB 45438-2025, TC260 AIGC){count}:")
        for label in labels:
            for field, value in label.items():
                meaning = f" ({_LABEL_MEANINGS[value]})" if field == "Label" and \
                    value in _LABEL_MEANINGS else ""
                out(f"    {field}: {value or '-'}{meaning}", highlight=False)
    elif report["xmp_error"]:
        out(f"  XMP metadata present but unreadable: {report['xmp_error']}")
    else:
        out("  Implicit label (GB 45438-2025): none")
    credentials = report["credentials"]
    if credentials is not None:
        state = "valid" if credentials["valid"] else "NOT valid"
        out(f"  C2PA content credentials: {state} ({credentials['validation_state']}), "
            f"claim generator {credentials['claim_generator']}", highlight=False)
        if credentials.get("actions"):
            out(f"    actions: {', '.join(credentials['actions'])}", highlight=False)
        if credentials.get("digital_source_type"):
            out(f"    digital source type: {credentials['digital_source_type']}",
                highlight=False)
        for ingredient in credentials.get("ingredients") or []:
            out(f"    ingredient: {ingredient.get('title')} ({ingredient.get('relationship')}"
                f"{', with its own manifest' if ingredient.get('has_manifest') else ''})",
                highlight=False)
        if credentials.get("errors"):
            out(f"    reported: {', '.join(credentials['errors'])}", highlight=False)
    elif report["credentials_error"]:
        out(f"  C2PA content credentials present but unreadable: {report['credentials_error']}")
    else:
        out("  C2PA content credentials: none")
    mark = report["visible_mark"]
    out(f"  Visible mark: {mark!r} (drawn by imagegate)" if mark is not None
        else "  Visible mark: none recorded in the file", highlight=False)
