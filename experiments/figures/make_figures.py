"""Paper figures of SmolLM2-135M, as PDF and PNG (and SVG), from the shipped experiments and one load.

- smollm2_roles: head roles as small multiples (experiments/head_roles/smollm2_roles.json);
- smollm2_ablation: the single-head zero-ablation sweep on the induction loss
  (experiments/ablation/smollm2_sweep_induction_loss.json);
- smollm2_maxflow: max-flow to the last position of a sentence, layers as columns;
- smollm2_k_composition: the K-composition sources of every induction head (the induction circuit);
- smollm2_patterns: the strongest induction and previous-token heads on a repeated sentence.
Then the whole report (`build_report`, with the two JSON files) to measure its size.

  python experiments/figures/make_figures.py [--only maxflow patterns] [--report /tmp/smollm2_report.html]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import headscope
from headscope.analysis.composition import composition_graph
from headscope.analysis.flow import token_flow
from headscope.analysis.roles import RoleTable
from headscope.heads import head_name
from headscope.viz import effects_figure, layered_graph_figure, pattern_figure, role_heatmap, write_image
from headscope.viz.graphs import ROLE_ABBREVIATIONS
from headscope.viz.page import write_page
from headscope.viz.report import ReportOptions, build_report

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ROLES = ROOT / "experiments/head_roles/smollm2_roles.json"
SWEEP = ROOT / "experiments/ablation/smollm2_sweep_induction_loss.json"
SENTENCE = "When Mary and John went to the store, John gave a drink to"
REPEATED = "The old lighthouse keeper counted ships. The old lighthouse keeper counted ships."
FIGURES = ["roles", "ablation", "maxflow", "composition", "patterns"]


def save(fig, name: str) -> list[str]:
    """The figure as PDF, PNG (300 dpi) and SVG; returns the file names."""
    for suffix in ("pdf", "png", "svg"):
        write_image(fig, HERE / f"{name}.{suffix}")
    return [f"{name}.{suffix}" for suffix in ("pdf", "png", "svg")]


def induction_circuit(model, table: RoleTable):
    """The K-composition graph cut to the induction heads and the three strongest sources of each."""
    graph = composition_graph(model, "k", top_k=3, roles=table)
    readers = {h.name for h in table.with_role("induction")}
    keep = readers | {u for r in readers for u in graph.predecessors(r)}
    circuit = graph.subgraph(keep).copy()
    circuit.remove_edges_from([(u, v) for u, v in list(circuit.edges) if v not in readers])
    for node in circuit.nodes:  # sources are not scored by their own inputs here: the figure is about readers
        if node not in readers:
            circuit.nodes[node].pop("score", None)
    return circuit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", type=Path, help="Also write the full report here and print its size.")
    parser.add_argument("--only", nargs="*", choices=FIGURES, default=FIGURES, help="Only these figures.")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    table = RoleTable.from_json(ROLES.read_text())
    written = []
    if "roles" in args.only:
        written += save(role_heatmap(table, style="double", title="SmolLM2-135M: head roles"), "smollm2_roles")
    if "ablation" in args.only:
        written += save(effects_figure(json.loads(SWEEP.read_text()), 30, 9, style="double",
                                       title="SmolLM2-135M: zero-ablating one head at a time, induction loss"),
                        "smollm2_ablation")
    if {"maxflow", "composition", "patterns"} & set(args.only):
        written += model_figures(headscope.load_model("smollm2-135m"), table, args.only)
    print("wrote", ", ".join(written))
    if args.report:
        start = time.perf_counter()
        page = build_report("smollm2-135m", roles=ROLES, ablation=SWEEP, options=ReportOptions(),
                            command="python experiments/figures/make_figures.py --report " + str(args.report))
        write_page(page, args.report)
        print(f"report {args.report}: {args.report.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - start:.0f} s")


def model_figures(model, table: RoleTable, only: list[str]) -> list[str]:
    """The figures that need the model: max-flow, the induction circuit, the pattern grid."""
    written = []
    if "maxflow" in only:
        flow = token_flow(model, model.to_tokens(SENTENCE), "maxflow")
        written += save(layered_graph_figure(flow.graph, top_k=3, style="double",
                                             title="SmolLM2-135M: attention max-flow to the last token"),
                        "smollm2_maxflow")
    if "composition" in only:
        written += save(layered_graph_figure(induction_circuit(model, table), style="double",
                                             title="SmolLM2-135M: K-composition into the induction heads"),
                        "smollm2_k_composition")
    if "patterns" in only:
        tokens = model.to_tokens(REPEATED)
        heads = [(h.layer, h.head) for h in table.with_role("induction")[:2] + table.with_role("previous_token")[:2]]
        names = sorted({f"blocks.{l}.attn.hook_pattern" for l, _ in heads})
        _, cache = model.run_with_cache(tokens, names_filter=names, return_type=None)
        patterns = {f"{head_name(l, h)} ({'/'.join(ROLE_ABBREVIATIONS[r] for r in table.head(l, h).roles)})":
                    cache[f"blocks.{l}.attn.hook_pattern"][0, h] for l, h in heads}
        written += save(pattern_figure(patterns, model.to_str_tokens(tokens[0]), style="double",
                                       title="SmolLM2-135M: induction and previous-token heads on a repeated sentence"),
                        "smollm2_patterns")
    return written


if __name__ == "__main__":
    main()
