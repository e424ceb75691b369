"""Layered graph diagrams: layers as columns, nodes coloured and sized by the quantity the method computed,
edges drawn by weight.

One function draws every graph headscope makes, from the attributes the graph carries:
- token graphs (flow, contribution, route graphs): nodes with `layer` and `position` (and `token`); rows are
  positions, labelled with their tokens;
- head graphs (composition graphs): nodes with `layer` and `head` (and `roles`, ";"-joined); rows are
  heads, and heads holding roles are labelled with them.
The node quantity is the attribute `graph.graph["node_value"]` names (max-flow `flow`, rollout
`relevance`, composition `score`, a contribution...), or the one passed in; nodes without it are drawn
small and grey. Edges carry `weight`.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.viz.style import DIVERGING, MUTED, SEQUENTIAL, Style, apply_style, colorbar, get_style, tick_step, token_label

ROLE_ABBREVIATIONS = {"previous_token": "prev", "induction": "ind", "duplicate_token": "dup", "attention_sink": "sink",
                      "self": "self", "local": "local", "next_token": "next", "sep": "sep"}
EDGE_BINS = 5  # plotly draws one width per trace: edges are binned by weight


def layered_graph_figure(graph: nx.DiGraph, value: str | None = None, *, top_k: int | None = None,
                         style: str | Style | None = None, title: str | None = None, caption: str | None = None,
                         hide_isolated: bool = False) -> go.Figure:
    """A token or head graph as a layered diagram: x = layer, y = position (token graphs) or head (head
    graphs). Nodes are coloured and sized by `value` (default `graph.graph["node_value"]`), edges drawn by
    `weight` (width and darkness); `top_k` keeps only the k strongest edges into each node;
    `hide_isolated` leaves out nodes with no edge. The node values are in the node trace's `marker.color`."""
    style = get_style(style)
    kind = _kind(graph)
    value = value or graph.graph.get("node_value")
    graph = _pruned(graph, top_k, hide_isolated)
    layers = sorted({int(d["layer"]) for _, d in graph.nodes(data=True)})
    column = {layer: n for n, layer in enumerate(layers)}
    row_key = "position" if kind == "token" else "head"
    n_rows = 1 + max(int(d[row_key]) for _, d in graph.nodes(data=True))
    xy = {node: (column[int(d["layer"])], int(d[row_key])) for node, d in graph.nodes(data=True)}
    fig = go.Figure()
    for trace in _edge_traces(graph, xy):
        fig.add_trace(trace)
    label = graph.graph.get("node_value_label", value or "")
    for trace in _node_traces(graph, xy, value, label, kind, style):
        fig.add_trace(trace)
    plot_w = style.width - 16 * style.font_px
    row_h = max(1.5 * style.font_px, min(22.0, plot_w / max(len(layers), 1)))
    labelled = kind == "head" and any(d.get("roles") for _, d in graph.nodes(data=True))
    step = tick_step(len(layers), plot_w, style)
    fig.update_xaxes(title=dict(text="layer (0 = input)" if kind == "token" else "layer", standoff=2),
                     tickmode="array", tickvals=list(range(len(layers)))[::step], ticktext=[str(l) for l in layers][::step],
                     range=[-0.6, len(layers) - 0.4 + (1.3 if labelled else 0)],  # room for the last column's labels
                     showgrid=False, zeroline=False)
    if kind == "token":
        tokens = {int(d["position"]): str(d.get("token", "")) for _, d in graph.nodes(data=True)}
        ticks = [f"{token_label(tokens.get(p, ''))} ({p})" for p in range(n_rows)]
    else:
        ticks = [str(h) for h in range(n_rows)]
    fig.update_yaxes(title=dict(text="token (position)" if kind == "token" else "head", standoff=2), tickmode="array",
                     tickvals=list(range(n_rows)), ticktext=ticks, autorange="reversed", showgrid=False,
                     zeroline=False, range=[n_rows - 0.5, -0.5])
    longest = max((len(t) for t in ticks), default=2)
    margin = {"l": (0.6 * min(longest, 24) + 3) * style.font_px, "r": 7 * style.font_px}
    height_in = (n_rows * row_h + 5 * style.font_px) / 96
    if caption is None:
        drawn = "the strongest edge" if top_k == 1 else f"the {top_k} strongest edges"
        caption = _caption(graph, value, kind) + (f" Only {drawn} into each node are drawn." if top_k else "")
    return apply_style(fig, style, height_in, title, caption, margin)


def _kind(graph: nx.DiGraph) -> str:
    nodes = list(graph.nodes(data=True))
    if not nodes:
        raise InputError("the graph has no nodes to draw")
    if all("layer" in d and "position" in d for _, d in nodes):
        return "token"
    if all("layer" in d and "head" in d for _, d in nodes):
        return "head"
    raise InputError("cannot lay out this graph: every node needs `layer` and `position` (a token graph) or "
                     "`layer` and `head` (a head graph)")


def _pruned(graph: nx.DiGraph, top_k: int | None, hide_isolated: bool) -> nx.DiGraph:
    """A copy with only the `top_k` strongest edges (by |weight|) into each node, isolated nodes dropped
    if asked; the input graph is never changed."""
    if top_k is None and not hide_isolated:
        return graph
    kept = graph.copy()
    if top_k is not None:
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        for node in list(kept.nodes):
            incoming = sorted(kept.in_edges(node, data="weight"), key=lambda e: abs(e[2] or 0.0), reverse=True)
            kept.remove_edges_from((u, v) for u, v, _ in incoming[top_k:])
    if hide_isolated:
        kept.remove_nodes_from([n for n in list(kept.nodes) if kept.degree(n) == 0])
        if kept.number_of_nodes() == 0:
            raise InputError("no node of the graph has an edge")
    return kept


def _edge_traces(graph: nx.DiGraph, xy: dict) -> list[go.Scatter]:
    """Edges in EDGE_BINS width classes of |weight|; signed weights red (positive) and blue (negative)."""
    weights = [float(w or 0.0) for _, _, w in graph.edges(data="weight")]
    top = max((abs(w) for w in weights), default=0.0) or 1.0
    signed = any(w < 0 for w in weights)
    traces = []
    for sign in ((1, -1) if signed else (1,)):
        for b in range(EDGE_BINS):
            low, high = top * b / EDGE_BINS, top * (b + 1) / EDGE_BINS
            xs, ys = [], []
            for u, v, w in graph.edges(data="weight"):
                w = float(w or 0.0)
                if (w >= 0) == (sign > 0) and (low < abs(w) <= high or (b == 0 and w == 0)):
                    xs += [xy[u][0], xy[v][0], None]
                    ys += [xy[u][1], xy[v][1], None]
            if xs:
                strength = (b + 1) / EDGE_BINS
                rgb = "40, 40, 40" if not signed else ("178, 24, 43" if sign > 0 else "33, 102, 172")
                traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                         line=dict(width=0.4 + 2.6 * strength, color=f"rgba({rgb}, {0.15 + 0.7 * strength:.2f})")))
    return traces


def _node_traces(graph: nx.DiGraph, xy: dict, value: str | None, label: str, kind: str, style: Style) -> list[go.Scatter]:
    """Nodes without the value (small, grey) and with it (coloured and sized by it, labelled with roles)."""
    nodes = list(graph.nodes(data=True))
    valued = [(n, d) for n, d in nodes if value and _number(d.get(value)) is not None]
    bare = [(n, d) for n, d in nodes if not (value and _number(d.get(value)) is not None)]
    traces = []
    if bare:
        labels = _labels(bare, kind, [""] * len(bare))  # no hover: these nodes carry nothing to read
        traces.append(go.Scatter(
            x=[xy[n][0] for n, _ in bare], y=[xy[n][1] for n, _ in bare], showlegend=False,
            marker=dict(size=0.45 * style.font_px, color=MUTED), hoverinfo="skip" if labels["mode"] == "markers" else "text",
            textfont=dict(size=0.8 * style.font_px), **labels))
    if valued:
        values = np.array([_number(d[value]) for _, d in valued])
        bound = float(np.abs(values).max()) or 1.0
        signed = bool((values < 0).any())
        sizes = 0.5 * style.font_px + 1.1 * style.font_px * np.sqrt(np.abs(values) / bound)
        hover = [_hover(n, d, kind) + f"<br>{value} {_number(d[value]):.4g}" for n, d in valued]
        traces.append(go.Scatter(
            x=[xy[n][0] for n, _ in valued], y=[xy[n][1] for n, _ in valued], showlegend=False, hoverinfo="text",
            textfont=dict(size=0.8 * style.font_px), **_labels(valued, kind, hover),
            marker=dict(size=sizes, color=values, colorscale=DIVERGING if signed else SEQUENTIAL,
                        cmin=-bound if signed else 0.0, cmax=bound, line=dict(width=0.5, color="black"),
                        colorbar=colorbar(label, style, len=1))))
    return traces


def _labels(nodes: list, kind: str, hover: list[str]) -> dict:
    """Mode, text and hover text of a node trace: head nodes holding roles carry their name and roles as
    printed text to the right of the marker; everything else only hovers."""
    texts = [f"{n} {'/'.join(ROLE_ABBREVIATIONS.get(r, r) for r in str(d.get('roles', '')).split(';') if r)}"
             if kind == "head" and d.get("roles") else "" for n, d in nodes]
    if not any(texts):
        return {"mode": "markers", "text": hover}
    return {"mode": "markers+text", "text": texts, "textposition": "middle right", "hovertext": hover,
            "cliponaxis": False}


def _hover(node, data: dict, kind: str) -> str:
    if kind == "token":
        return f"{token_label(str(data.get('token', '')))} (position {data['position']}, layer {data['layer']})"
    return f"{node}" + (f"<br>{data['roles']}" if data.get("roles") else "")


def _number(value) -> float | None:
    """A finite float, or None for a missing, non-numeric or NaN attribute."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _caption(graph: nx.DiGraph, value: str | None, kind: str) -> str:
    weights = [abs(float(w or 0.0)) for _, _, w in graph.edges(data="weight")]
    parts = [f"Node colour and area: {graph.graph.get('node_value_label', value)}." if value else "",
             "Grey dots: nodes without that value." if value and any(_number(d.get(value)) is None
                                                                      for _, d in graph.nodes(data=True)) else "",
             f"Edge width and darkness: {graph.graph.get('weight', 'edge weight')} (strongest {max(weights):.3g})."
             if weights else ""]
    if kind == "head" and any(d.get("roles") for _, d in graph.nodes(data=True)):
        held = sorted({r for _, d in graph.nodes(data=True) for r in str(d.get("roles", "")).split(";") if r})
        parts.append("Roles: " + ", ".join(f"{ROLE_ABBREVIATIONS.get(r, r)} = {r.replace('_', ' ')}" for r in held) + ".")
    return " ".join(p for p in parts if p)
