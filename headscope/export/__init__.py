"""Writers for graphs and tables, each atomic: a failure never leaves a half-written file."""

from headscope.export.graphs import GRAPH_FORMATS, write_graph

__all__ = ["GRAPH_FORMATS", "write_graph"]
