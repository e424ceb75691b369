"""Attention patterns of one or several heads on one prompt, tokens on both axes: a grid of panels for
print, a head selector for the screen (as CircuitsVis' `attention_heads`), and a text view that colours
each token by the attention a chosen query gives it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from headscope.errors import InputError
from headscope.heads import head_name
from headscope.viz.style import SEQUENTIAL, Style, apply_style, colorbar, get_style, tick_step, token_label


def _as_patterns(patterns, tokens: list[str], causal: bool) -> dict[str, np.ndarray]:
    """name -> (query, key) float array, the future masked to NaN; one unnamed matrix becomes {"": it}."""
    named = dict(patterns) if isinstance(patterns, Mapping) else {"": patterns}
    if not named:
        raise InputError("no patterns to draw")
    out = {}
    for name, pattern in named.items():
        weights = np.asarray(pattern, dtype=float)
        n = weights.shape[0]
        if weights.shape != (n, n) or len(tokens) != n:
            raise InputError(f"pattern {name or ''} of shape {weights.shape} and {len(tokens)} tokens do not match")
        out[name] = np.where(np.tril(np.ones((n, n), dtype=bool)), weights, np.nan) if causal else weights
    return out


def pattern_figure(patterns, tokens: list[str], title: str | None = None, causal: bool = True,
                   style: str | Style | None = None, selector: bool = False) -> go.Figure:
    """Attention of one head (a (query, key) matrix) or several (a mapping name -> matrix) on one prompt:
    queries down, keys across, both axes labelled with the prompt's `tokens`; the future of a causal model
    is blank. Several heads are a grid of panels with one colour scale, or with `selector` one panel and
    a menu that switches heads (for HTML pages only: a menu does not print)."""
    style = get_style(style)
    named = _as_patterns(patterns, tokens, causal)
    labels = [token_label(t) for t in tokens]
    n = len(tokens)
    names = list(named)
    n_cols = 1 if selector else min(math.ceil(math.sqrt(len(names))), 2 if style.width_in < 5 else 3)
    n_rows = 1 if selector else math.ceil(len(names) / n_cols)
    longest = min(max(len(t) for t in tokens) + 1, 14)
    margin = {"l": (0.6 * longest + 4) * style.font_px, "r": 7 * style.font_px,
              "b": (0.6 * longest + 3.5) * style.font_px}  # the keys' labels stand vertical under the panels
    panel = (style.width - margin["l"] - margin["r"]) / n_cols - (longest * 0.6 * style.font_px if n_cols > 1 else 0)
    fig = make_subplots(rows=n_rows, cols=n_cols, shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=min(0.2, 2.5 * style.font_px * n_rows / (n_rows * panel + 1)),
                        subplot_titles=None if selector or names == [""] else names)
    for k, name in enumerate(names):
        fig.add_trace(go.Heatmap(
            z=named[name], coloraxis="coloraxis", visible=not selector or k == 0, name=name,
            hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra>" + html.escape(name) + "</extra>"),
            row=1 if selector else k // n_cols + 1, col=1 if selector else k % n_cols + 1)
    step = tick_step(n, panel, style, spacing=1.2)  # one line of text per token row
    ticks = dict(tickmode="array", tickvals=list(range(0, n, step)), ticktext=labels[::step], showgrid=False,
                 ticks="")
    fig.update_xaxes(tickangle=-90, constrain="domain", range=[-0.5, n - 0.5], **ticks)
    fig.update_xaxes(title=dict(text="key", standoff=2), row=n_rows)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", **ticks)
    fig.update_yaxes(title=dict(text="query", standoff=2), col=1)
    fig.update_annotations(font=dict(size=style.font_px))
    fig.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1,
                                     colorbar=colorbar("attention weight", style, len=min(1.0, 300 / max(panel, 1)))))
    if selector and len(names) > 1:
        fig.update_layout(updatemenus=[dict(
            buttons=[dict(label=name, method="update", args=[{"visible": [j == k for j in range(len(names))]}])
                     for k, name in enumerate(names)],
            direction="down", x=1, xanchor="right", y=1.02, yanchor="bottom")])
    caption = "Rows: queries; columns: the keys they attend to." + (" Blank: future positions (causal mask)." if causal else "")
    height_in = (n_rows * (panel + 2.5 * style.font_px) + (0.6 * longest + 4) * style.font_px) / 96
    return apply_style(fig, style, height_in, title, caption, margin | ({"t": 4 * style.font_px} if selector else {}))


def attention_text_html(pattern, tokens: list[str], query: int, head: str = "") -> str:
    """An HTML snippet: the prompt's tokens, each behind a colour whose strength is the attention the
    token at position `query` gives it (row `query` of the (query, key) `pattern`); the query is boxed."""
    weights = np.asarray(pattern, dtype=float)
    n = len(tokens)
    if weights.shape != (n, n):
        raise InputError(f"pattern of shape {weights.shape} and {n} tokens do not match")
    if not -n <= query < n:
        raise InputError(f"query position {query} is out of range for a prompt of {n} tokens")
    query %= n
    row = np.nan_to_num(weights[query])
    top = float(row.max()) or 1.0
    spans = []
    for position, (token, weight) in enumerate(zip(tokens, row)):
        alpha = weight / top
        style = f"background: rgba(33, 102, 172, {alpha:.3f}); color: {'white' if alpha > 0.55 else 'black'};"
        if position == query:
            style += " outline: 2px solid #b2182b;"
        text = html.escape(token).replace("\n", "\\n") or "∅"
        spans.append(f'<span class="hs-token" style="{style}" title="position {position}: {weight:.3f}">{text}</span>')
    what = f"{html.escape(head)}: " if head else ""
    legend = (f"<div class=\"hs-caption\">{what}attention from the boxed token (position {query}) to every token; "
              f"darkest = {top:.3f}.</div>")
    return f'<div class="hs-text" style="white-space: pre-wrap; line-height: 1.8;">{"".join(spans)}</div>{legend}'


def head_patterns(model, tokens, heads: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """name -> (query, key) attention of each of `heads` on one prompt (`tokens`, (pos,) or (1, pos)), from
    one forward pass that keeps only the layers named."""
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    names = sorted({f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.device), names_filter=names, return_type=None)
    return {head_name(l, h): cache[f"blocks.{l}.attn.hook_pattern"][0, h].float().cpu() for l, h in heads}


def write_patterns(model, text: str, heads: list[tuple[int, int]], outs: list[str | Path],
                   query: int | None = None) -> None:
    """The attention of `heads` on the prompt `text`, to each of `outs` by suffix: .html a page with a head
    selector (and, given a `query` position, the text view of each head's attention from it); .svg, .pdf,
    .png a grid of every head."""
    from headscope.viz.page import Page, write_page
    from headscope.viz.render import write_image

    tokens = model.to_tokens(text)
    strings = model.to_str_tokens(tokens[0])
    patterns = head_patterns(model, tokens, heads)
    title = f"{model.name}: attention of {', '.join(patterns)}"
    if query is not None:
        views = [attention_text_html(p, strings, query, name) for name, p in patterns.items()]  # checks query first
    for out in outs:
        if Path(out).suffix.lower() in (".html", ".htm"):
            page = Page(title)
            page.figure(pattern_figure(patterns, strings, causal=model.cfg.causal, style="screen",
                                       selector=len(patterns) > 1))
            for view in views if query is not None else []:
                page.raw(view)
            write_page(page, out)
        else:
            write_image(pattern_figure(patterns, strings, title, causal=model.cfg.causal), out)
