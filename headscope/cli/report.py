"""`headscope report`: one offline page (or PDF) per model with roles, patterns, effects, a flow graph and
provenance."""

from __future__ import annotations

import shlex

import click

from headscope.cli.options import DEFAULT_MODEL, device_option


@click.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@click.option("--roles", "roles_path", type=click.Path(exists=True, dir_okay=False),
              help="A roles.json from `headscope classify --json` (default: classify now).")
@click.option("--ablation", "ablation_path", type=click.Path(exists=True, dir_okay=False),
              help="An ablation result from `headscope ablate --json` (default: a zero-ablation sweep now).")
@click.option("--patching", "patching_path", type=click.Path(exists=True, dir_okay=False),
              help="A patching result in the same JSON vocabulary (shown only when given).")
@click.option("--flow", "flow_path", type=click.Path(exists=True, dir_okay=False),
              help="A graph from `headscope flow --out g.json` (.json, .graphml, .gexf; default: max-flow now).")
@click.option("--out", "outs", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="report.html (offline page) or report.pdf. Repeatable.")
@click.option("--num-prompts", default=8, show_default=True, type=click.IntRange(min=2),
              help="Prompts of the roles and ablation computed here.")
@click.option("--seq-len", default=32, show_default=True, type=click.IntRange(min=4),
              help="Tokens per prompt of the roles and ablation computed here.")
@click.option("--prompt", help="The prompt of the patterns and the flow graph.  [default: an IOI sentence]")
@click.option("--seed", default=0, show_default=True)
@device_option
def report(model_source: str, roles_path: str | None, ablation_path: str | None, patching_path: str | None,
           flow_path: str | None, outs: tuple[str, ...], num_prompts: int, seq_len: int, prompt: str | None,
           seed: int, device: str) -> None:
    """Everything about a model's heads on one page that opens offline: roles, the strongest heads'
    patterns, ablation (and patching) effects, a flow graph, and where every number came from."""
    from pathlib import Path

    from headscope.errors import InputError
    from headscope.viz.page import write_page
    from headscope.viz.report import DEFAULT_PROMPT, ReportOptions, build_report

    bad = [o for o in outs if Path(o).suffix.lower() not in (".html", ".htm", ".pdf")]
    if bad:
        raise InputError(f"{bad[0]}: the report is written as .html or .pdf")
    options = ReportOptions(num_prompts=num_prompts, seq_len=seq_len, seed=seed, prompt=prompt or DEFAULT_PROMPT,
                            device=device)
    page = build_report(model_source, roles_path, ablation_path, patching_path, flow_path, options,
                        command=_invocation(click.get_current_context()))
    for out in outs:
        write_page(page, out)
        click.echo(f"wrote {out}")


def _invocation(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the parsed parameters (arguments, then options not at their default)."""
    words = ["headscope", ctx.info_name or "report"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value not in (None, (), param.default):
            for one in value if isinstance(value, tuple) else (value,):
                words += [param.opts[0], str(one)]
    return shlex.join(words)
