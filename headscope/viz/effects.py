"""Effects of interventions on heads (ablation, patching): a layer x head heatmap for a sweep of single
heads, bars with their 95% intervals otherwise, the baseline always in the caption.

Both read the shared JSON vocabulary, so any result that writes it draws the same way: "model", "method",
"metric", optionally "baseline", "results": [{"heads": ["L1H2", ...], "value", optionally "delta" and
"ci"}], "meta". The plotted effect is "delta" where results carry it (ablation: the metric's change), else
"value" (patching: the effect itself).
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go

from headscope.errors import InputError
from headscope.heads import parse_heads
from headscope.viz.style import DIVERGING, Style, apply_style, colorbar, get_style, tick_step


UNITS = {"loss": "nats", "induction-loss": "nats", "kl": "nats", "logit-diff": "logits"}  # of the metric's values


def effects_figure(result, n_layers: int, n_heads: int, style: str | Style | None = None,
                   title: str | None = None) -> go.Figure:
    """`result` (an `AblationResult`, a patching result, or their JSON as a dict or text) as a heatmap of
    a single-head sweep over all `n_layers` x `n_heads` heads, or as bars for anything else."""
    data = _as_dict(result)
    style = get_style(style)
    rows = data.get("results") or []
    if not rows:
        raise InputError("the result has no rows to draw")
    key = "delta" if all("delta" in row for row in rows) else "value"
    heads = [parse_heads(row["heads"], n_layers, n_heads) for row in rows]
    effects = np.array([np.nan if row.get(key) is None else float(row[key]) for row in rows])
    metric = data.get("metric", "metric")
    unit = UNITS.get(metric, "")
    label = (f"change in {metric}" if key == "delta" else f"effect on {metric}") + (f" ({unit})" if unit else "")
    sweep = all(len(h) == 1 for h in heads) and len({h[0] for h in heads}) == n_layers * n_heads
    caption = _caption(data, key, sweep)
    if sweep:
        fig, height_in, margin = _heatmap(heads, effects, rows, n_layers, n_heads, label, style)
    else:
        fig, height_in, margin = _bars(heads, effects, rows, label, style)
    default = f"{_short(data.get('model', ''))}: {data.get('method', '')} {_kind(data)} of heads"
    return apply_style(fig, style, height_in, title if title is not None else default, caption, margin)


def _as_dict(result) -> dict:
    if isinstance(result, dict):
        return result
    if isinstance(result, (str, bytes)):
        return json.loads(result)
    return json.loads(result.to_json())


def _kind(data: dict) -> str:
    return "patching" if "patch" in str(data.get("method", "")) or data.get("kind") == "patching" else "ablation"


def _short(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1] if model else "model"


def _caption(data: dict, key: str, heatmap: bool) -> str:
    meta = data.get("meta") or {}
    baseline = data.get("baseline", meta.get("baseline"))
    base = f"baseline (clean model) {data.get('metric', 'metric')} = {baseline:.4g}" if baseline is not None \
        else "no baseline recorded"
    text = f"{data.get('method', '')} {_kind(data)}; {base}."
    if key == "delta":
        text += " Effect: the metric with the heads ablated minus the baseline" + (" (red: it went up)." if heatmap else ".")
    if meta.get("n_prompts"):
        text += f" Mean over {meta['n_prompts']} prompts x {meta.get('seq_len')} tokens"
        text += f" ({meta['dataset']})." if meta.get("dataset") else "."
    return text


def _heatmap(heads, effects, rows, n_layers, n_heads, label, style: Style) -> tuple[go.Figure, float, dict]:
    """Layers across, heads down: a sweep's grid is wide, as a page is."""
    grid = np.full((n_heads, n_layers), np.nan)
    ci = np.full((n_heads, n_layers, 2), np.nan)
    for (layer, head), effect, row in zip((h[0] for h in heads), effects, rows):
        grid[head, layer] = effect
        ci[head, layer] = row.get("ci") or (np.nan, np.nan)
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    plot_w = style.width - 13 * style.font_px
    cell = min(plot_w / n_layers, 16.0)
    fig = go.Figure(go.Heatmap(
        z=grid.astype(np.float32), customdata=ci.astype(np.float32), colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound,
        colorbar=colorbar(label, style, len=1, lenmode="fraction"),
        hovertemplate="L%{x}H%{y}<br>%{z:+.4f} [%{customdata[0]:+.4f}, %{customdata[1]:+.4f}]<extra></extra>"))
    fig.update_xaxes(title=dict(text="layer", standoff=2), tickmode="linear", tick0=0,
                     dtick=tick_step(n_layers, plot_w, style), showgrid=False, ticks="",
                     range=[-0.5, n_layers - 0.5])
    fig.update_yaxes(title=dict(text="head", standoff=2), tickmode="linear", tick0=0, showgrid=False, ticks="",
                     dtick=tick_step(n_heads, n_heads * cell, style), autorange="reversed")
    return fig, (max(n_heads * cell, 9 * style.font_px) + 5 * style.font_px) / 96, {}


def _bars(heads, effects, rows, label, style: Style) -> tuple[go.Figure, float, dict]:
    names = [",".join(f"L{l}H{h}" for l, h in group) for group in heads]
    ci = np.array([row.get("ci") or (np.nan, np.nan) for row in rows], dtype=float)
    order = np.argsort(-np.abs(np.nan_to_num(effects)))[:40]  # the strongest first, at most 40 bars
    errors = dict(type="data", symmetric=False, array=ci[order, 1] - effects[order],
                  arrayminus=effects[order] - ci[order, 0], thickness=1, width=2) if np.isfinite(ci).any() else None
    fig = go.Figure(go.Bar(y=[names[i] for i in order], x=effects[order], orientation="h", error_x=errors,
                           marker=dict(color="#3b6fb6"), hovertemplate="%{y}: %{x:+.4f}<extra></extra>"))
    fig.update_xaxes(title=dict(text=label + (" (bars: 95% interval)" if errors else "")), zeroline=True,
                     zerolinecolor="black", zerolinewidth=1)
    fig.update_yaxes(autorange="reversed", automargin=True)
    longest = max(len(names[i]) for i in order)
    margin = {"l": (0.62 * longest + 1.5) * style.font_px}  # the head names fit left of the axis
    return fig, (len(order) * 1.8 * style.font_px + 6 * style.font_px) / 96, margin
