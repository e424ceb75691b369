"""Figures of patching results: layer x head and layer x position heatmaps, bars for a few patches.

Colour is the normalised effect (0 = the corrupted run, 1 = the clean run) when the two runs differ,
else the metric itself; every cell's hover gives the value and its bootstrap interval.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from headscope.heads import head_name


def _scale(result) -> tuple[bool, str]:
    normalized = all(e.normalized is not None for e in result.effects)
    return normalized, ("normalised " if normalized else "") + result.metric


def _hover(e) -> str:
    where = ",".join(head_name(l, h) for l, h in e.heads) or f"resid into L{e.layer}"
    at = "" if e.positions is None else f" @ pos {','.join(map(str, e.positions))}"
    norm = "" if e.normalized is None else f"<br>normalised {e.normalized:.3f}"
    return f"{where}{at}<br>{e.value:.4f} [{e.ci[0]:.4f}, {e.ci[1]:.4f}]{norm}"


def _heatmap(z: np.ndarray, hover, label: str, normalized: bool) -> go.Heatmap:
    if normalized:
        return go.Heatmap(z=z, text=hover, hoverinfo="text", colorscale="RdBu_r", zmid=0,
                          colorbar=dict(title=dict(text=label)))
    return go.Heatmap(z=z, text=hover, hoverinfo="text", colorscale="Viridis", colorbar=dict(title=dict(text=label)))


def patching_figure(result, tokens: list[str] | None = None) -> go.Figure:
    """A `PatchResult` as a layer x head heatmap (head sweeps), a layer x position heatmap (residual
    stream, or heads x positions with one row per head), or bars with intervals (a few patches)."""
    n_layers, n_heads = result.meta.get("n_layers", 0), result.meta.get("n_heads", 0)
    n_pos = result.meta.get("n_pos", 0)
    normalized, label = _scale(result)
    direction = "denoising" if result.meta.get("denoise") else "noising"
    title = f"{result.model}: {result.method} {result.kind} patching ({direction}), {label}; clean " \
            f"{result.clean:.3f}, corrupted {result.corrupted:.3f}"
    with_pos = [e for e in result.effects if e.positions is not None and len(e.positions) == 1]
    single = [e for e in result.effects if len(e.heads) == 1 and e.positions is None]
    labels = [tokens[p] if tokens and p < len(tokens) else str(p) for p in range(n_pos)]
    if result.kind == "resid" or (with_pos and len(with_pos) == len(result.effects) and len(result.effects) > 1):
        rows = n_layers if result.kind == "resid" else n_layers * n_heads
        grid = result.position_grid(rows, n_pos, normalized).numpy()
        hover = np.full(grid.shape, "", dtype=object)
        for e in with_pos:
            row = e.layer if e.layer is not None else e.heads[0][0] * n_heads + e.heads[0][1]
            hover[row, e.positions[0]] = _hover(e)
        names = [f"L{l}" for l in range(n_layers)] if result.kind == "resid" else \
            [head_name(l, h) for l in range(n_layers) for h in range(n_heads)]
        fig = go.Figure(_heatmap(grid, hover.tolist(), label, normalized))
        fig.update_layout(xaxis=dict(title="position", tickvals=list(range(n_pos)), ticktext=labels, tickangle=-60),
                          yaxis=dict(title="layer" if result.kind == "resid" else "head", tickvals=list(range(rows)),
                                     ticktext=names), width=max(560, 40 * n_pos + 300), height=max(420, 16 * rows + 220))
    elif len(single) == len(result.effects) and len(single) > 1 and n_layers and n_heads:
        grid = result.grid(n_layers, n_heads, normalized).numpy()
        hover = np.full(grid.shape, "", dtype=object)
        for e in single:
            hover[e.heads[0]] = _hover(e)
        fig = go.Figure(_heatmap(grid, hover.tolist(), label, normalized))
        fig.update_layout(xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1),
                          width=max(520, 60 * n_heads + 260), height=max(420, 22 * n_layers + 200))
    else:
        names = [_hover(e).split("<br>")[0] for e in result.effects]
        values = [e.value for e in result.effects]
        fig = go.Figure(go.Bar(x=names, y=values, error_y=dict(
            type="data", symmetric=False, array=[e.ci[1] - e.value for e in result.effects],
            arrayminus=[e.value - e.ci[0] for e in result.effects])))
        for level, name in ((result.clean, "clean"), (result.corrupted, "corrupted")):
            fig.add_hline(y=level, line_dash="dot", annotation_text=name)
        fig.update_layout(xaxis=dict(title="patch"), yaxis=dict(title=result.metric), width=720, height=480)
    fig.update_layout(title=dict(text=title), template="plotly_white")
    return fig
