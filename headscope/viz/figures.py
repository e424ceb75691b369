"""Figures: a layer x head heatmap per role, and a pattern viewer for one head on one prompt.

Functions return `plotly.graph_objects.Figure`s and write nothing; `render.py` writes them.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from headscope.analysis.roles import RoleTable


def role_heatmap(table: RoleTable, title: str | None = None) -> go.Figure:
    """One layer x head heatmap per role, switched by buttons; heads holding the role are outlined.

    Hover gives the head, its score, the 95% interval and the null. Colours are fixed to [0, 1] so that
    roles and models compare by eye.
    """
    roles = table.roles
    layers, heads = np.arange(table.n_layers), np.arange(table.n_heads)
    fig = go.Figure()
    for n, role in enumerate(roles):
        scores, hover, held_x, held_y = _role_grid(table, role)
        fig.add_trace(go.Heatmap(
            z=scores, x=heads, y=layers, zmin=0, zmax=1, colorscale="Viridis", visible=n == 0,
            text=hover, hoverinfo="text", colorbar=dict(title=dict(text="score"))))
        fig.add_trace(go.Scatter(
            x=held_x, y=held_y, mode="markers", visible=n == 0, hoverinfo="skip", showlegend=False,
            marker=dict(symbol="square-open", size=16, color="white", line=dict(width=2))))
    buttons = [dict(label=role, method="update",
                    args=[{"visible": [i // 2 == n for i in range(2 * len(roles))]},
                          {"title.text": _title(table, role, title)}])
               for n, role in enumerate(roles)]
    fig.update_layout(
        title=dict(text=_title(table, roles[0], title)), template="plotly_white",
        width=max(520, 60 * table.n_heads + 260), height=max(420, 22 * table.n_layers + 200),
        xaxis=dict(title="head", tickmode="linear", dtick=1), yaxis=dict(title="layer", tickmode="linear", dtick=1),
        updatemenus=[dict(buttons=buttons, direction="down", x=1, xanchor="right", y=1.02, yanchor="bottom")],
        annotations=[dict(text="role:", x=1, xref="paper", xanchor="right", xshift=-150, y=1.02, yref="paper",
                          yanchor="bottom", yshift=8, showarrow=False)],
        margin=dict(t=120))
    return fig


def _title(table: RoleTable, role: str, title: str | None) -> str:
    return title or f"{table.model}: {role} score per head (outlined: holds the role)"


def _role_grid(table: RoleTable, role: str):
    scores = np.full((table.n_layers, table.n_heads), np.nan)
    hover = np.empty((table.n_layers, table.n_heads), dtype=object)
    held_x, held_y = [], []
    for row in table.heads:
        score = row.scores[role]
        lo, hi = row.intervals[role]
        scores[row.layer, row.head] = score
        verdict = "holds the role" if role in row.roles else "no role"
        hover[row.layer, row.head] = (f"{row.name}<br>{role} {score:.3f} [{lo:.3f}, {hi:.3f}]"
                                      f"<br>null {float(row.nulls[role]):.3f}: {verdict}")
        if role in row.roles:
            held_x.append(row.head)
            held_y.append(row.layer)
    return scores, hover, held_x, held_y


def pattern_figure(pattern, tokens: list[str], title: str, causal: bool = True) -> go.Figure:
    """A head's attention on one prompt: queries down, keys across, each axis labelled with its tokens.

    pattern: (query, key) weights; tokens: the prompt's token strings. Masked (future) keys stay blank.
    """
    weights = np.asarray(pattern, dtype=float)
    n = weights.shape[0]
    if weights.shape != (n, n) or len(tokens) != n:
        raise ValueError(f"pattern {weights.shape} and {len(tokens)} tokens do not match")
    if causal:
        weights = np.where(np.tril(np.ones((n, n), dtype=bool)), weights, np.nan)
    labels = [_visible(t) for t in tokens]
    hover = [[f"query {i} {labels[i]}<br>key {j} {labels[j]}<br>weight {weights[i, j]:.3f}" for j in range(n)]
             for i in range(n)]
    fig = go.Figure(go.Heatmap(z=weights, zmin=0, zmax=1, colorscale="Blues", text=hover, hoverinfo="text",
                               colorbar=dict(title=dict(text="attention"))))
    size = min(1200, max(640, 22 * n + 300))
    axis = dict(tickmode="array", tickvals=list(range(n)), ticktext=labels, tickfont=dict(size=11 if n < 60 else 7))
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top"), template="plotly_white", width=size,
                      height=size, margin=dict(t=170, l=120),
                      xaxis=dict(title=dict(text="key", standoff=8), side="top", **axis),
                      yaxis=dict(title="query", autorange="reversed", scaleanchor="x", **axis))
    return fig


def _visible(token: str) -> str:
    """A token as a label: whitespace shown, markup escaped."""
    return html.escape(token.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t")) or "∅"


def flow_figure(graph, title: str | None = None, width_bins: int = 5) -> go.Figure:
    """A layered flow graph: positions across (tokens on the axis), layers up, edge width by weight,
    node colour by the attribute `graph.graph["node_value"]` names (default relevance to the target);
    hover gives token, layer and values."""
    nodes = graph.nodes(data=True)
    value = graph.graph.get("node_value", "relevance")
    n_pos = 1 + max(data["position"] for _, data in nodes)
    tokens = {data["position"]: data.get("token", "") for _, data in nodes}
    fig = go.Figure()
    weights = [w for _, _, w in graph.edges(data="weight")]
    top = max(weights, default=1.0) or 1.0
    for bin_index in range(width_bins):  # plotly draws one width per trace: bin the edges
        low, high = top * bin_index / width_bins, top * (bin_index + 1) / width_bins
        xs, ys = [], []
        for u, v, w in graph.edges(data="weight"):
            if low < w <= high or (bin_index == 0 and w == 0):
                xs += [graph.nodes[u]["position"], graph.nodes[v]["position"], None]
                ys += [graph.nodes[u]["layer"], graph.nodes[v]["layer"], None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line=dict(width=0.5 + 4 * (bin_index + 1) / width_bins,
                                               color=f"rgba(60, 90, 160, {0.15 + 0.6 * (bin_index + 1) / width_bins})")))
    hover = [f"{_visible(data.get('token', ''))} (position {data['position']}, layer {data['layer']})"
             f"<br>{value} {data.get(value, float('nan')):.4f}"
             + (f"<br>max-flow {data['flow']:.4f}" if "flow" in data else "") for _, data in nodes]
    fig.add_trace(go.Scatter(
        x=[data["position"] for _, data in nodes], y=[data["layer"] for _, data in nodes], mode="markers",
        text=hover, hoverinfo="text", showlegend=False,
        marker=dict(size=9, color=[data.get(value, 0.0) for _, data in nodes], colorscale="Reds",
                    line=dict(width=0.5, color="grey"), colorbar=dict(title=dict(text=value)))))
    fig.update_layout(
        title=dict(text=title or f"{graph.graph.get('method', 'flow')} to position {graph.graph.get('target', '')}"),
        template="plotly_white", width=min(1600, max(640, 34 * n_pos + 240)), height=720,
        xaxis=dict(title="token", tickmode="array", tickvals=list(range(n_pos)),
                   ticktext=[_visible(tokens.get(p, "")) for p in range(n_pos)], tickangle=-60),
        yaxis=dict(title="layer (0 = input)", dtick=max(1, graph.graph.get("n_layers", 6) // 6)))
    return fig


def ablation_figure(result, n_layers: int, n_heads: int) -> go.Figure:
    """A head sweep as a layer x head heatmap of effects; other ablations as bars with their intervals."""
    label = f"change in {result.metric} ({result.method} ablation; baseline {result.baseline:.3f})"
    single = all(len(e.heads) == 1 for e in result.effects) and len(result.effects) == n_layers * n_heads
    if single:
        grid = result.grid(n_layers, n_heads).numpy()
        hover = [[f"L{l}H{h}<br>delta {e.delta:+.4f} [{e.ci[0]:+.4f}, {e.ci[1]:+.4f}]"
                  for h, e in enumerate(result.effects[l * n_heads : (l + 1) * n_heads])] for l in range(n_layers)]
        bound = float(np.nanmax(np.abs(grid))) or 1.0
        fig = go.Figure(go.Heatmap(z=grid, text=hover, hoverinfo="text", colorscale="RdBu_r", zmin=-bound,
                                   zmax=bound, colorbar=dict(title=dict(text="delta"))))
        fig.update_layout(xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1),
                          width=max(520, 60 * n_heads + 260), height=max(420, 22 * n_layers + 200))
    else:
        names = [",".join(f"L{l}H{h}" for l, h in e.heads) for e in result.effects]
        deltas = [e.delta for e in result.effects]
        fig = go.Figure(go.Bar(x=names, y=deltas, error_y=dict(
            type="data", symmetric=False, array=[e.ci[1] - e.delta for e in result.effects],
            arrayminus=[e.delta - e.ci[0] for e in result.effects])))
        fig.update_layout(xaxis=dict(title="ablated heads"), yaxis=dict(title="delta"), width=720, height=480)
    fig.update_layout(title=dict(text=f"{result.model}: {label}"), template="plotly_white")
    return fig
