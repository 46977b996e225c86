"""Usage records as CSV: one format for `GET /admin/usage?format=csv` and `imagegate usage
--csv`."""

from __future__ import annotations

import csv
import io
from typing import Any

from .admin import USAGE_COLUMNS


def usage_csv(rows: list[dict[str, Any]]) -> str:
    """A header of USAGE_COLUMNS, then one line per row, in the order given."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(USAGE_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
