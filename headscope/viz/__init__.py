"""Figures for papers and pages: role heatmaps, effect heatmaps, layered graphs, attention patterns, and
self-contained pages and reports that open offline.

Functions that make figures return `plotly.graph_objects.Figure`s laid out at a printed size (`style=`
"single" 3.5 in, "double" 7 in, "screen"); `render.py` and `page.py` write them.
"""

from headscope.viz.effects import effects_figure
from headscope.viz.graphs import layered_graph_figure
from headscope.viz.lengths import length_figure, length_page
from headscope.viz.page import Page, write_page
from headscope.viz.patterns import attention_text_html, pattern_figure
from headscope.viz.render import write_figure, write_html, write_image
from headscope.viz.roles import role_heatmap
from headscope.viz.style import STYLES, Style, get_style

__all__ = ["Page", "STYLES", "Style", "attention_text_html", "effects_figure", "get_style", "layered_graph_figure",
           "length_figure", "length_page", "pattern_figure", "role_heatmap", "write_figure", "write_html", "write_image", "write_page"]
