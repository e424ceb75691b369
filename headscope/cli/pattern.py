"""`headscope pattern`: one head's attention on one prompt, as a page."""

from __future__ import annotations

import click

from headscope.cli.options import check_outputs, device_option, prompt_options, read_prompt


@click.command()
@click.argument("model_source", metavar="MODEL")
@click.argument("head_name", metavar="HEAD")
@prompt_options
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False), help="The page to write.")
@device_option
def pattern(model_source: str, head_name: str, text: str | None, prompt_file: str | None, html_path: str,
            device: str) -> None:
    """An interactive view of one head's attention (e.g. L18H6) on one prompt, tokens on both axes."""
    from headscope.errors import InputError
    from headscope.heads import parse_heads
    from headscope.loading.load import load_model
    from headscope.viz import pattern_figure, write_html

    text = read_prompt(text, prompt_file)
    check_outputs(html_path)
    model = load_model(model_source, device=device)
    heads = parse_heads(head_name, model.cfg.n_layers, model.cfg.n_heads)
    if len(heads) != 1:
        raise InputError(f"HEAD names one head; got {len(heads)} ({head_name})")
    [(layer, head)] = heads
    tokens = model.to_tokens(text)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    figure = pattern_figure(cache[name][0, head].cpu(), model.to_str_tokens(tokens[0]),
                            f"{model.name}: {head_name.strip()} attention", causal=model.cfg.causal)
    write_html(figure, html_path)
    click.echo(f"wrote {html_path}")
