"""Each head's score of one role by sequence length: a line per head (the strongest ones), length on a log
axis, the role's threshold dashed; points where the head holds the role are filled."""

from __future__ import annotations

import math

import plotly.colors
import plotly.graph_objects as go

from headscope.analysis.lengths import LengthSweep
from headscope.viz.page import Page
from headscope.viz.roles import role_heatmap
from headscope.viz.style import MUTED, Style, apply_style, get_style

# Okabe & Ito's eight colour-blind-safe colours (plotly's "Safe" qualitative set is the same idea).
COLORS = plotly.colors.qualitative.Safe


def length_figure(sweep: LengthSweep, top: int = 8, style: str | Style | None = None,
                  title: str | None = None) -> go.Figure:
    """The sweep's role score of its `top` strongest heads (highest score at any length) against the
    sequence length; every other head is one thin grey line, so a head that rises late still shows."""
    style = get_style(style)
    rows = sweep.rows()
    x = list(sweep.seq_lens)
    fig = go.Figure()
    for n, row in enumerate(rows):
        y = [row["scores"][str(length)] for length in x]
        strong = n < top
        held = [length in row["held"] for length in x]
        fig.add_trace(go.Scatter(
            x=x, y=y, name=row["heads"][0], mode="lines+markers" if strong else "lines", showlegend=strong,
            line=dict(color=COLORS[n % len(COLORS)] if strong else MUTED, width=1.6 if strong else 0.5),
            marker=dict(size=0.7 * style.font_px, symbol=["circle" if h else "circle-open" for h in held]),
            customdata=[[row["kv_group"]] for _ in x],
            hovertemplate=f"{row['heads'][0]}" + "<br>length %{x}<br>score %{y:.3f}<br>kv group %{customdata[0]}"
                          "<extra></extra>", opacity=1 if strong else 0.6))
    threshold = sweep.meta.get("threshold")
    if threshold is not None and math.isfinite(threshold):
        fig.add_hline(y=threshold, line=dict(color="black", width=0.8, dash="dash"))
    fig.update_xaxes(type="log", tickvals=x, ticktext=[f"{length:,}" for length in x],
                     title=dict(text="sequence length (tokens per prompt)", standoff=2))
    fig.update_yaxes(title=dict(text=f"{sweep.role.replace('_', ' ')} score", standoff=2), rangemode="tozero")
    fig.update_layout(legend=dict(font=dict(size=style.font_px), tracegroupgap=0))
    caption = (f"The {min(top, len(rows))} heads with the highest {sweep.role} score at any length in colour, the "
               "others grey. Filled: the head holds the role at that length")
    caption += "; dashed: the role's threshold." if threshold is not None else "."
    per_length = sweep.meta.get("per_length", [])
    if per_length:
        counts = [entry.get("num_prompts", sweep.meta.get("num_prompts")) for entry in per_length]
        prompts = (f"{counts[0]} prompts per length" if len(set(counts)) == 1
                   else f"{', '.join(str(c) for c in counts)} prompts at these lengths")
        caption += f" {prompts}; {sum(entry['seconds'] for entry in per_length):.1f} s in all."
    name = sweep.model.rstrip("/").rsplit("/", 1)[-1] if sweep.model else "model"
    return apply_style(fig, style, 0.5 * style.width_in + 0.5,
                       title if title is not None else f"{name}: {sweep.role} score by sequence length", caption,
                       {"r": 9 * style.font_px})


def length_page(sweep: LengthSweep, style: str | Style | None = "screen") -> Page:
    """A page: the score-by-length figure, its table, then each length's role heatmap."""
    page = Page(f"{sweep.model}: head roles by sequence length")
    page.figure(length_figure(sweep, style=style))
    page.table([{"head": r["heads"][0], "kv group": r["kv_group"], **{f"{n:,}": r["scores"][str(n)] for n in
                                                                      sweep.seq_lens}} for r in sweep.rows()],
               caption=f"{sweep.role} score by sequence length, strongest head first")
    for length, table in zip(sweep.seq_lens, sweep.tables):
        page.heading(f"{length:,} tokens per prompt", anchor=f"len-{length}")
        page.figure(role_heatmap(table, style=style, title=f"head roles at {length:,} tokens"))
    return page
