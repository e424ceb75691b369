"""`headscope flow`: token flow (rollout, max-flow, contributions, routes) of one prompt, or head composition
graphs, as graph files or figures."""

from __future__ import annotations

from pathlib import Path

import click

from headscope.cli.options import (DEFAULT_MODEL, check_outputs, device_option, finite_float, name_list,
                                   prompt_options, read_prompt)
from headscope.errors import InputError
from headscope.export.graphs import GRAPH_FORMATS
from headscope.viz.render import FIGURE_SUFFIXES

OUTPUT_SUFFIXES = tuple(GRAPH_FORMATS) + FIGURE_SUFFIXES


@click.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@prompt_options
@click.option("--method", type=click.Choice(["rollout", "maxflow", "alti", "norm", "value-zeroing", "routes",
                                            "composition", "ablation"]), default="rollout", show_default=True,
              help="Attention flow (rollout, maxflow); contributions to each layer's output (alti, norm, "
                   "value-zeroing); the information-flow routes of the prediction at --target-pos (routes); head "
                   "composition from the weights; or the composition graph's edges weighted by path ablation.")
@click.option("--composition", "kind", type=click.Choice(["q", "k", "v"]), default="k", show_default=True,
              help="With --method composition: Q-, K- or V-composition.")
@click.option("--roles", "roles_path", type=click.Path(exists=True, dir_okay=False),
              help="A roles.json from `headscope classify`, to label the heads of a composition graph.")
@click.option("--target-pos", default=-1, show_default=True, help="The output position the flow goes to.")
@click.option("--gradient", is_flag=True, help="Weight attention by its gradient for the predicted token's logit.")
@click.option("--heads", callback=name_list, help="Average only these heads, e.g. L1H6,L0H3 (default: every head).")
@click.option("--threshold", type=float, callback=finite_float,
              help="Leave out edges weaker than this (routes: the share of a node's input an edge must carry; "
                   "default 0.04).")
@click.option("--top-k", type=int, help="Keep the k strongest edges into each node.")
@click.option("--out", "outs", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Output file; the suffix picks the format: " + ", ".join(OUTPUT_SUFFIXES) + ". Repeatable.")
@device_option
def flow(model_source: str, text: str | None, prompt_file: str | None, method: str, kind: str,
         roles_path: str | None, target_pos: int, gradient: bool, heads: list[str] | None, threshold: float | None,
         top_k: int | None, outs: tuple[str, ...], device: str) -> None:
    """How information reaches a target position, as a graph file or a figure: attention rollout or max-flow
    (Abnar & Zuidema 2020); what each layer's output is made of (ALTI, norms, value zeroing); the
    information-flow routes one prediction uses (Ferrando & Voita 2024); or, with --method composition,
    which heads read what earlier heads write (Elhage et al. 2021), from the weights."""
    from headscope.loading.load import load_model

    bad = [o for o in outs if Path(o).suffix.lower() not in OUTPUT_SUFFIXES]
    if bad:
        raise InputError(f"unknown output format {Path(bad[0]).suffix or '(no suffix)'!r} for {bad[0]}: "
                         f"use {', '.join(OUTPUT_SUFFIXES)}")
    check_outputs(*outs)
    if method in ("composition", "ablation"):
        model = load_model(model_source, device=device)
        graph = _composition_graph(model, kind, roles_path, threshold, top_k, measured=method == "ablation")
        what = "path-ablation effects" if method == "ablation" else f"{kind.upper()}-composition"
        _write(graph, outs, title=f"{model.name}: {what} between heads")
        return
    from headscope.analysis.flow import token_flow
    from headscope.heads import parse_heads

    prompt = read_prompt(text, prompt_file)
    model = load_model(model_source, device=device)
    chosen = parse_heads(heads, model.cfg.n_layers, model.cfg.n_heads) if heads is not None else None
    built = token_flow(model, model.to_tokens(prompt), method, target_pos, chosen, threshold, top_k, gradient)
    _write(built.graph, outs, title=f"{model.name}: {method} to position {built.graph.graph['target']}")


def _composition_graph(model, kind: str, roles_path: str | None, threshold: float | None, top_k: int | None,
                       measured: bool):
    from headscope.analysis.composition import DEFAULT_TOP_K, composition_graph
    from headscope.analysis.path_ablation import measured_composition_graph
    from headscope.analysis.roles import RoleTable

    roles = RoleTable.read(roles_path, model) if roles_path else None
    top_k = DEFAULT_TOP_K if top_k is None else top_k
    if measured:
        return measured_composition_graph(model, kind=kind, top_k=top_k, roles=roles)
    return composition_graph(model, kind, threshold, top_k, roles)


def _write(graph, outs: tuple[str, ...], title: str | None) -> None:
    from headscope.export import write_graph

    for out in outs:
        if Path(out).suffix.lower() in FIGURE_SUFFIXES:
            from headscope.viz import layered_graph_figure, write_figure

            write_figure(layered_graph_figure(graph, title=title), out)
        else:
            write_graph(graph, out)
        click.echo(f"wrote {out}")
