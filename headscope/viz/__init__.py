"""Plotly figures of head roles and attention patterns, written as pages that open offline."""

from headscope.viz.figures import ablation_figure, flow_figure, pattern_figure, role_heatmap
from headscope.viz.render import write_figure, write_html, write_image

__all__ = ["ablation_figure", "flow_figure", "pattern_figure", "role_heatmap", "write_figure", "write_html", "write_image"]
