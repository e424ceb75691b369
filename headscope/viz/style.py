"""One style for every figure: sizes of a journal column, fonts sized for them, colour-blind-safe scales.

A figure is laid out at its printed size: plotly's pixels are 1/96 in (kaleido writes a 672 px wide figure
as a 7 in PDF page), so a `Style` names the width in inches and fonts in points, and converts. "single" is
one column of a two-column paper (3.5 in), "double" the full text width (7 in), "screen" a page to look at.

Colour scales: viridis for quantities from 0 up (perceptually uniform, readable in grey and by the common
colour-vision deficiencies), ColorBrewer's RdBu for signed effects (diverging, colour-blind safe), both as
recommended by Crameri et al. (2020).

References
----------
Crameri, Shephard & Heron (2020), "The misuse of colour in science communication", Nature Communications.
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass

import plotly.graph_objects as go

from headscope.errors import InputError

PX_PER_IN = 96  # CSS pixels: what kaleido maps to inches in SVG and PDF
PX_PER_PT = PX_PER_IN / 72
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"  # red = the metric went up (ablating the head hurt), blue = down
FONT_FAMILY = "Arial, Liberation Sans, Helvetica, sans-serif"
MUTED = "#9a9a9a"  # nodes and cells that carry no value


@dataclass(frozen=True)
class Style:
    """A figure's printed width (inches), font sizes (points) and PNG resolution (dots per inch)."""

    name: str
    width_in: float
    font_pt: float = 8.0
    title_pt: float = 9.0
    png_dpi: int = 300

    @property
    def width(self) -> int:
        """The width in plotly pixels."""
        return round(self.width_in * PX_PER_IN)

    @property
    def font_px(self) -> float:
        return self.font_pt * PX_PER_PT

    @property
    def title_px(self) -> float:
        return self.title_pt * PX_PER_PT

    @property
    def png_scale(self) -> float:
        """kaleido's scale factor that gives `png_dpi` at the printed size."""
        return self.png_dpi / PX_PER_IN

    def chars_per_line(self, width_px: float, size_px: float | None = None) -> int:
        """How many characters of text fit in `width_px` (average glyph about 0.55 em wide)."""
        return max(8, int(width_px / (0.55 * (size_px or self.font_px))))


STYLES = {
    "single": Style("single", 3.5, font_pt=7.0, title_pt=8.0),
    "double": Style("double", 7.0),
    "screen": Style("screen", 10.0, font_pt=9.0, title_pt=11.0, png_dpi=144),
}


def get_style(style: str | Style | None) -> Style:
    """A `Style` from a name in STYLES (default "double") or a `Style` itself."""
    if isinstance(style, Style):
        return style
    found = STYLES.get(style or "double")
    if found is None:
        raise InputError(f"unknown figure style {style!r}: use {', '.join(STYLES)} or a Style")
    return found


def wrap(text: str, chars: int) -> str:
    """Text broken into lines of at most `chars` characters, joined with plotly's <br>."""
    return "<br>".join(textwrap.wrap(text, chars, break_on_hyphens=False)) or text


def apply_style(fig: go.Figure, style: Style, height_in: float, title: str | None = None,
                caption: str | None = None, margin: dict | None = None) -> go.Figure:
    """Size `fig` to the style's width, set fonts, and place a wrapped title above and a wrapped caption
    below the plot. `height_in` is the height without title and caption: their lines are added to it (and
    to the margins), so that the plot keeps its size and no text leaves the canvas."""
    margin = {"l": 6 * style.font_px, "r": 2 * style.font_px, "t": 1.5 * style.font_px,
              "b": 4 * style.font_px} | (margin or {})
    width, height = style.width, height_in * PX_PER_IN
    annotations = list(fig.layout.annotations)
    title_lines = wrap(title, style.chars_per_line(width - 2 * style.font_px, style.title_px)) if title else ""
    caption_lines = wrap(caption, style.chars_per_line(width - 5 * style.font_px)) if caption else ""  # automargin may shift it
    if title:
        added = (title_lines.count("<br>") + 1) * 1.3 * style.title_px
        margin["t"] += added
        height += added
    if caption:
        added = ((caption_lines.count("<br>") + 1) * 1.4 + 0.8) * style.font_px  # plotly's line height is ~1.3 em
        margin["b"] += added
        height += added
    if title:
        fig.update_layout(title=dict(text=title_lines, x=0.5, xanchor="center", xref="paper",
                                     y=1 - 0.4 * style.title_px / height, yanchor="top", yref="container",
                                     font=dict(size=style.title_px)))
    if caption:
        plot_w, plot_h = width - margin["l"] - margin["r"], height - margin["t"] - margin["b"]
        annotations.append(go.layout.Annotation(  # paper coordinates reach into the margins past 0 and 1
            text=caption_lines, x=(style.font_px - margin["l"]) / plot_w, xref="paper", xanchor="left",
            y=(0.3 * style.font_px - margin["b"]) / plot_h, yref="paper", yanchor="bottom", align="left",
            showarrow=False, font=dict(size=style.font_px)))
    fig.update_layout(
        width=width, height=round(height), template="simple_white", annotations=annotations,
        font=dict(family=FONT_FAMILY, size=style.font_px, color="black"),
        margin={k: round(v) for k, v in margin.items()}, hoverlabel=dict(font=dict(size=style.font_px)))
    fig.update_xaxes(title_font=dict(size=style.font_px), tickfont=dict(size=style.font_px))
    fig.update_yaxes(title_font=dict(size=style.font_px), tickfont=dict(size=style.font_px))
    return fig


def colorbar(title: str, style: Style, **extra) -> dict:
    """A colour bar whose title names the quantity and its unit, sized to the style."""
    return dict(title=dict(text=title, side="right", font=dict(size=style.font_px)), thickness=0.9 * style.font_px,
                tickfont=dict(size=style.font_px), outlinewidth=0, **extra)


def tick_step(n: int, length_px: float, style: Style, spacing: float = 1.6) -> int:
    """Every how many cells an axis of `n` cells drawn over `length_px` can carry a readable label (labels
    `spacing` font sizes apart)."""
    per_label = spacing * style.font_px
    steps = [m * 10**e for e in range(6) for m in (1, 2, 5)]
    return next(s for s in steps if n / s * per_label <= length_px or s >= n)


def token_label(token: str) -> str:
    """A token as an axis label: spaces shown as a middle dot, line breaks and tabs escaped, markup escaped."""
    return html.escape(token.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t")) or "∅"
