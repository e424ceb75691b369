"""How results show themselves in a notebook: compact HTML tables and one-line reprs.

A leaf module (standard library only), so result classes at every layer (capture, analysis) can use it
without importing the figures above them. A result's `_repr_html_` is `html_table(rows, ...)` of its
rows as plain dicts; its `__repr__` is `short_repr(...)`: the class, its names and shapes, never whole
tensors.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence

MAX_ROWS = 12  # a notebook cell shows a glance; the whole result is in to_json / to_frame


def format_value(value) -> str:
    """A cell: floats to 4 significant digits, sequences joined, None and NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value) if value else "–"
    if hasattr(value, "shape"):  # a tensor or array: its shape, never its contents
        return f"{type(value).__name__}{tuple(value.shape)}"
    return str(value)


def html_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, caption: str | None = None,
               max_rows: int = MAX_ROWS) -> str:
    """An HTML table of the first `max_rows` of `rows` (dicts), in `columns` (default: the first row's
    keys), with a caption and a note of how many rows were left out."""
    columns = list(columns or (rows[0].keys() if rows else []))
    shown = list(rows[:max_rows])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(row.get(c)))}</td>" for c in columns) + "</tr>"
                   for row in shown)
    more = len(rows) - len(shown)
    note = f'<tr><td colspan="{max(len(columns), 1)}">… {more} more rows</td></tr>' if more > 0 else ""
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<table class="hs-table">{title}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}{note}</tbody></table>")


def results_html(data: Mapping, max_rows: int = MAX_ROWS) -> str:
    """A result in the shared JSON vocabulary ("model", "method", "metric", optionally "baseline",
    "results": [{"heads": [...], "value", ...}]) as an HTML table, the largest effect ("delta" where rows
    have it, else "value") first: what a patching or ablation result's `_repr_html_` returns."""
    rows = [dict(row, heads=",".join(row.get("heads", []))) for row in data.get("results", [])]
    key = "delta" if rows and all("delta" in row for row in rows) else "value"
    rows.sort(key=lambda row: -abs(row.get(key) or 0.0))
    baseline = data.get("baseline", (data.get("meta") or {}).get("baseline"))
    caption = f"{data.get('model', '')}: {data.get('method', '')}, {data.get('metric', '')}" + \
        (f", baseline {format_value(float(baseline))}" if baseline is not None else "") + f"; largest {key} first"
    return html_table(rows, caption=caption, max_rows=max_rows)


def short_repr(obj, fields: Mapping[str, object]) -> str:
    """`ClassName(field=value, ...)` with each value formatted by `format_value` (shapes, not contents)."""
    inner = ", ".join(f"{name}={_brief(value)}" for name, value in fields.items())
    return f"{type(obj).__name__}({inner})"


def _brief(value) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else "…" + value[-57:])
    if isinstance(value, Iterable) and not hasattr(value, "shape") and not isinstance(value, Mapping):
        items = list(value)
        shown = ", ".join(_item(v) for v in items[:6])
        return f"[{shown}{', …' if len(items) > 6 else ''}]"
    return format_value(value)


def _item(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return format_value(value)
