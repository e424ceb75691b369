"""Writing figures: standalone HTML pages that open with no network, written atomically."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.io import atomic_path
from headscope.viz.style import PX_PER_IN


def write_html(fig: go.Figure, path: str | Path) -> None:
    """A self-contained page (plotly.js inside, about 5 MB): it renders offline, unlike a CDN link."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{path}: an interactive figure is written as .html")
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)


STATIC_SUFFIXES = (".svg", ".pdf", ".png")
FIGURE_SUFFIXES = (".html",) + STATIC_SUFFIXES  # what `write_figure` writes, by suffix


def write_image(fig: go.Figure, path: str | Path, dpi: int = 300) -> None:
    """A static figure for a paper (.svg and .pdf are vector, at the figure's printed size; .png at `dpi`
    dots per inch of that size), drawn by kaleido in a headless Chromium."""
    suffix = Path(path).suffix.lower()
    if suffix not in STATIC_SUFFIXES:
        raise InputError(f"{path}: a static figure is written as {', '.join(STATIC_SUFFIXES)}")
    scale = dpi / PX_PER_IN if suffix == ".png" else 1
    with atomic_path(path) as tmp:
        try:
            try:
                fig.write_image(tmp, format=suffix[1:], scale=scale)
            except (RuntimeError, ValueError, OSError):  # kaleido's page may not be ready on a loaded machine
                fig.write_image(tmp, format=suffix[1:], scale=scale)  # ("kaleido_scopes is not defined"): once more
        except (ImportError, RuntimeError, ValueError, OSError) as err:
            raise InputError(f"could not draw {path}: static figures need kaleido and Chromium "
                             f"(scripts/install_chromium.sh): {str(err).splitlines()[0]}") from err


def write_figure(fig: go.Figure, path: str | Path, dpi: int = 300) -> None:
    """.html (interactive) or .svg / .pdf / .png (static, PNG at `dpi`), by the suffix."""
    if Path(path).suffix.lower() in (".html", ".htm"):
        write_html(fig, path)
    else:
        write_image(fig, path, dpi)
