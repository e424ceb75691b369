"""Every graph export reads back with the same nodes, edges and attributes."""

import json

import networkx as nx
import pytest
import torch
from networkx.readwrite import json_graph

from headscope.analysis.flow import flow_graph
from headscope.errors import InputError
from headscope.export import write_graph


@pytest.fixture
def graph() -> nx.DiGraph:
    attention = torch.tensor([[[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [0.2, 0.3, 0.5]]] * 2, dtype=torch.float64)
    return flow_graph(attention, tokens=["<s>", "the", "cat"]).graph


def read_dot_back(path) -> nx.DiGraph:
    """DOT keeps strings only: unquote names and turn numbers back into numbers."""
    def value(text):
        text = text.strip('"')
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    raw = nx.nx_pydot.read_dot(path)
    graph = nx.DiGraph()
    graph.add_nodes_from((n.strip('"'), {k: value(v) for k, v in d.items()}) for n, d in raw.nodes(data=True)
                         if n.strip('"') not in ("node", "graph", "edge", "\\n"))
    graph.add_edges_from((u.strip('"'), v.strip('"'), {k: value(w) for k, w in d.items()})
                         for u, v, d in raw.edges(data=True))
    return graph


def assert_same_graph(read: nx.DiGraph, original: nx.DiGraph) -> None:
    assert set(read.nodes) == set(original.nodes) and set(read.edges) == set(original.edges)
    for node, data in original.nodes(data=True):
        assert {k: read.nodes[node][k] for k in data} == data
    for u, v, data in original.edges(data=True):
        assert read.edges[u, v]["capacity"] == pytest.approx(data["capacity"])


@pytest.mark.parametrize("suffix, reader", [
    (".graphml", nx.read_graphml),
    (".gexf", nx.read_gexf),
    (".json", lambda p: json_graph.node_link_graph(json.loads(open(p).read()), edges="edges")),
    (".dot", lambda p: read_dot_back(p)),
])
def test_exports_read_back(graph, tmp_path, suffix, reader):
    path = tmp_path / f"flow{suffix}"
    write_graph(graph, path)
    assert_same_graph(reader(path), graph)


def test_unknown_suffix_and_missing_folder_leave_no_file(graph, tmp_path):
    with pytest.raises(InputError, match="unknown graph format '.xyz'"):
        write_graph(graph, tmp_path / "flow.xyz")
    with pytest.raises(InputError, match="does not exist"):
        write_graph(graph, tmp_path / "missing" / "flow.graphml")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".graphml", ".gexf", ".json", ".dot"])
def test_multigraph_exports_keep_every_parallel_edge(tmp_path, suffix):
    """Route graphs join two nodes by one edge per head: no format may merge them."""
    import pydot

    graph = nx.MultiDiGraph(node_value="contribution")
    graph.add_node("L0P1", layer=0.0, position=1, token="a", contribution=0.5)
    graph.add_node("L1P2", layer=1.0, position=2, token="b", contribution=1.0)
    for component, weight in (("L0H1", 0.3), ("L0H2", 0.2), ("residual", 0.5)):
        graph.add_edge("L0P1", "L1P2", key=component, component=component, weight=weight)
    path = tmp_path / f"routes{suffix}"
    write_graph(graph, path)
    if suffix == ".dot":
        assert len(pydot.graph_from_dot_file(str(path))[0].get_edges()) == 3
        return
    readers = {".graphml": nx.read_graphml, ".gexf": nx.read_gexf,
               ".json": lambda p: json_graph.node_link_graph(json.loads(open(p).read()), edges="edges")}
    read = readers[suffix](path)
    assert sorted(w for _, _, w in read.edges(data="weight")) == pytest.approx([0.2, 0.3, 0.5])
    assert sorted(c for _, _, c in read.edges(data="component")) == ["L0H1", "L0H2", "residual"]
