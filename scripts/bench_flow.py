"""Benchmark: max-flow from every input position to the last, headscope's solver against the paper's way.

SmolLM2-135M (30 layers), one prompt of 64 tokens, on this machine's CPU: headscope's `max_flow` (SciPy's
exact integer solver) against networkx's `maximum_flow_value` per input position on the full layered
graph, as Abnar & Zuidema ran it. Prints both times, the ratio and the largest difference of the flows.

  python scripts/bench_flow.py [--tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch

import headscope
from headscope.analysis.flow import flow_graph, layer_attention, max_flow, networkx_max_flow

from bench_report import report  # scripts/, beside this file

TEXT = ("The history of the city begins with a small fishing village on the river, where traders from the "
        "north came each summer to exchange furs for salt, grain and tools. Over the centuries the village grew "
        "into a market town, then a city with a cathedral, a university and a busy port that linked it to the "
        "markets of the south, and its merchants built the tall houses that still line the old harbour today.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = headscope.load_model("smollm2-135m")
    tokens = model.to_tokens(TEXT)[:, : args.tokens]
    if tokens.shape[1] < args.tokens:
        raise SystemExit(f"the text has only {tokens.shape[1]} tokens")
    attention = layer_attention(model, tokens)
    start = time.perf_counter()
    ours = max_flow(attention, target=-1)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    graph = flow_graph(attention)
    reference = networkx_max_flow(graph, target=-1)
    theirs_s = time.perf_counter() - start
    figures = {"command": f"python scripts/bench_flow.py --tokens {args.tokens}", "layers": model.cfg.n_layers,
               "tokens": args.tokens, "edges": graph.graph.number_of_edges(), "headscope_s": ours_s,
               "networkx_s": theirs_s, "speedup": theirs_s / ours_s,
               "max_abs_difference": float((ours - reference).abs().max()), "torch": torch.__version__}
    report(figures, args.json)


if __name__ == "__main__":
    main()
