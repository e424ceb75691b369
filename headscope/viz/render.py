"""Writing figures: standalone HTML pages that open with no network, written atomically."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.io import atomic_path


def write_html(fig: go.Figure, path: str | Path) -> None:
    """A self-contained page (plotly.js inside, about 5 MB): it renders offline, unlike a CDN link."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{path}: an interactive figure is written as .html")
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
