"""`headscope pattern`: the attention of one or several heads on one prompt, as a page or a figure."""

from __future__ import annotations

import click

from headscope.cli.options import check_outputs, device_option, prompt_options, read_prompt


@click.command()
@click.argument("model_source", metavar="MODEL")
@click.argument("head_names", metavar="HEADS")
@prompt_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="A page with a head selector.")
@click.option("--out", "outs", multiple=True, type=click.Path(dir_okay=False),
              help="A figure: .html (as --html), or .svg, .pdf, .png (a grid of every head). Repeatable.")
@click.option("--query", type=int, help="Also show, on the page, which tokens this position attends to (-1: the "
                                        "last).")
@device_option
def pattern(model_source: str, head_names: str, text: str | None, prompt_file: str | None, html_path: str | None,
            outs: tuple[str, ...], query: int | None, device: str) -> None:
    """The attention of heads (e.g. L18H6 or L18H6,L16H0) on one prompt, tokens on both axes."""
    from headscope.errors import InputError
    from headscope.heads import parse_heads
    from headscope.loading.load import load_model
    from headscope.viz.patterns import write_patterns

    paths = ([html_path] if html_path else []) + list(outs)
    if not paths:
        raise InputError("name where to write the view with --html or --out")
    if query is not None and not any(p.lower().endswith((".html", ".htm")) for p in paths):
        raise InputError("--query adds a text view to a page: write one with --html or --out .html")
    text = read_prompt(text, prompt_file)
    check_outputs(html_path)
    model = load_model(model_source, device=device)
    write_patterns(model, text, parse_heads(head_names, model.cfg.n_layers, model.cfg.n_heads), paths, query)
    for path in paths:
        click.echo(f"wrote {path}")
