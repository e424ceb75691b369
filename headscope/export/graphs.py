"""Graph files that Gephi, Cytoscape, yEd, Graphviz and networkx read: GraphML, GEXF, node-link JSON, DOT.

networkx writes them all (DOT through pydot); the suffix of the path picks the format. Every node and edge keeps its
attributes (layer, position, token, capacity/weight, role...).
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
from networkx.readwrite import json_graph

from headscope.errors import InputError
from headscope.io import atomic_path, strict_json


def _graphml(graph: nx.DiGraph, path: str) -> None:
    nx.write_graphml(graph, path)


def _gexf(graph: nx.DiGraph, path: str) -> None:
    nx.write_gexf(graph, path)


def _json(graph: nx.DiGraph, path: str) -> None:
    Path(path).write_text(strict_json(json_graph.node_link_data(graph, edges="edges"), indent=1))


def _dot(graph: nx.DiGraph, path: str) -> None:
    # DOT node ids may not contain ':' unquoted and attribute values must be strings: quote everything.
    # A multigraph (route graphs: one edge per head between the same two nodes) keeps every edge.
    quoted = nx.MultiDiGraph() if graph.is_multigraph() else nx.DiGraph()
    quoted.add_nodes_from((f'"{n}"', {k: f'"{v}"' for k, v in d.items()}) for n, d in graph.nodes(data=True))
    quoted.add_edges_from((f'"{u}"', f'"{v}"', {k: f'"{w}"' for k, w in d.items()}) for u, v, d in graph.edges(data=True))
    nx.nx_pydot.write_dot(quoted, path)


GRAPH_FORMATS = {".graphml": _graphml, ".gexf": _gexf, ".json": _json, ".dot": _dot}


def write_graph(graph: nx.DiGraph, path: str | Path) -> None:
    """Write `graph` in the format its suffix names (.graphml, .gexf, .json, .dot)."""
    writer = GRAPH_FORMATS.get(Path(path).suffix.lower())
    if writer is None:
        raise InputError(f"unknown graph format {Path(path).suffix or '(no suffix)'!r} for {path}: "
                         f"use one of {', '.join(GRAPH_FORMATS)}")
    with atomic_path(path) as tmp:
        writer(graph, tmp)
