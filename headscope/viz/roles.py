"""Role heatmaps as small multiples: one layer x head panel per role, one shared colour scale, held roles
outlined. The same figure serves print (every number is a colour, every verdict an outline) and the
screen (hover adds the 95% interval and the null).
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from headscope.analysis.roles import RoleTable
from headscope.viz.style import MUTED, SEQUENTIAL, Style, apply_style, colorbar, get_style, tick_step


def role_heatmap(table: RoleTable, style: str | Style | None = None, title: str | None = None,
                 roles: list[str] | None = None) -> go.Figure:
    """Small multiples of `table`: a (layer x head) panel per role (all of the table's roles, or `roles`),
    colours fixed to [0, 1] so roles and models compare by eye (widened to the scores' range when a role
    scored by a function of the weights leaves it, e.g. an OV copying score in [-1, 1]); heads holding the
    role are outlined."""
    style = get_style(style)
    roles = list(roles or table.roles)
    n_cols = min(len(roles), 3 if style.width_in < 5 else 6 if len(roles) <= 6 else 4)
    n_rows = math.ceil(len(roles) / n_cols)
    margin = {"l": 4.5 * style.font_px, "r": 6.5 * style.font_px}
    panel_w = (style.width - margin["l"] - margin["r"]) / n_cols * 0.9
    cell = min(panel_w / table.n_heads, 14.0)
    panel_h = max(min(table.n_layers * cell, max(0.4 * style.width, 180)), 3 * style.font_px)
    fig = make_subplots(rows=n_rows, cols=n_cols, shared_yaxes=True, horizontal_spacing=0.1 / n_cols,
                        vertical_spacing=min(0.3, 3.2 * style.font_px / (n_rows * (panel_h + 3.5 * style.font_px))),
                        subplot_titles=[role.replace("_", " ") for role in roles])
    group = table.kv_group_size
    grouped = group is not None and group > 1
    # GQA: heads reading one key/value head sit side by side; thin lines between groups, the group in the hover.
    separators = [g * group - 0.5 for g in range(1, table.n_heads // group)] if grouped else []
    group_hover = "<br>kv group %{customdata[3]:.0f}" if grouped else ""
    for n, role in enumerate(roles):
        row, col = n // n_cols + 1, n % n_cols + 1
        scores, extra, held = _role_grid(table, role)
        fig.add_trace(go.Heatmap(
            z=scores, customdata=extra, coloraxis="coloraxis", name=role,
            hovertemplate="L%{y}H%{x}<br>score %{z:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                          "<br>null %{customdata[2]:.3f}" + group_hover + "<extra>" + role + "</extra>"),
            row=row, col=col)
        for x in separators:
            fig.add_vline(x=x, line=dict(color=MUTED, width=0.8),
                          row=row, col=col)
        for layer, head in held:  # white inside black: an outline that shows on every colour of the scale
            for color, width in (("black", 2.2), ("white", 0.9)):
                fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                              line=dict(color=color, width=width), fillcolor="rgba(0,0,0,0)", opacity=1,
                              row=row, col=col)
    x_step = tick_step(table.n_heads, panel_w, style)
    y_step = tick_step(table.n_layers, panel_h, style)
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=x_step, showgrid=False, ticks="", constrain="domain",
                     range=[-0.5, table.n_heads - 0.5])
    fig.update_xaxes(title=dict(text="head", standoff=2), row=n_rows)
    fig.update_yaxes(tickmode="linear", tick0=0, dtick=y_step, autorange="reversed", showgrid=False, ticks="")
    fig.update_yaxes(title=dict(text="layer", standoff=2), col=1)
    fig.update_annotations(font=dict(size=style.font_px), yshift=-2)  # the panel titles
    low, high = _colour_range(table, roles)
    unit = "score (fraction of attention)" if (low, high) == (0, 1) else "score"
    fig.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=low, cmax=high,
                                     colorbar=colorbar(unit, style, len=min(1, 240 / panel_h))))
    caption = ("Outlined: the head holds the role (score at least the role's threshold and the lower end of "
               "its 95% bootstrap interval above the null). Layer 0 at the top.")
    if grouped:
        caption += f" Lines separate groups of {group} heads sharing a key/value head."
    meta = table.meta
    if meta.get("num_prompts"):
        caption += f" {meta['num_prompts']} prompts x {meta.get('seq_len')} tokens ({meta.get('dataset', 'dataset')})."
    height_in = (n_rows * (panel_h + 3.5 * style.font_px) + 6 * style.font_px) / 96
    return apply_style(fig, style, height_in, title if title is not None else f"{_short(table.model)}: head roles",
                       caption, margin)


def _colour_range(table: RoleTable, roles: list[str]) -> tuple[float, float]:
    """[0, 1], widened to whole numbers around any score outside it."""
    values = [v for row in table.heads for role in roles if math.isfinite(v := row.scores[role])]
    return min(0, math.floor(min(values, default=0))), max(1, math.ceil(max(values, default=1)))


def _short(model: str) -> str:
    """A model's name for a title: a registry name as it is, a path by its last part."""
    return model.rstrip("/").rsplit("/", 1)[-1] if model else "model"


def _role_grid(table: RoleTable, role: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(layers, heads) scores, (layers, heads, 4) interval ends, null and K/V group, and the heads holding the role."""
    scores = np.full((table.n_layers, table.n_heads), np.nan)
    extra = np.full((table.n_layers, table.n_heads, 4), np.nan)
    held = []
    for row in table.heads:
        lo, hi = row.intervals.get(role, (math.nan, math.nan))
        scores[row.layer, row.head] = row.scores[role]
        group = math.nan if row.kv_group is None else row.kv_group
        extra[row.layer, row.head] = (lo, hi, float(row.nulls.get(role, math.nan)), group)
        if role in row.roles:
            held.append((row.layer, row.head))
    return scores.astype(np.float32), extra.astype(np.float32), held  # float32: half the page weight, 7 digits
