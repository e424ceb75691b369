"""`headscope models list | fetch | verify | info`: the registered models, the cache, one model's config and hooks."""

from __future__ import annotations

import click

from headscope.io import write_text_atomically
from headscope.reports import describe_model, model_table


@click.group()
def models() -> None:
    """List, fetch and inspect models."""


@models.command("list")
def models_list() -> None:
    """The registered models and where they are cached."""
    from headscope.loading.registry import list_models

    click.echo("\n".join(model_table(list_models())))


@models.command("fetch")
@click.argument("names", nargs=-1, required=True)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download registered models into the cache.

    The cache is $HEADSCOPE_CACHE, else $XDG_CACHE_HOME/headscope, else ~/.cache/headscope.
    """
    from headscope.loading.registry import fetch, get_entry

    for entry in [get_entry(name) for name in names]:  # check every name before downloading any
        click.echo(f"{entry.name}: {fetch(entry)}")


@models.command("verify")
@click.argument("names", nargs=-1)
def models_verify(names: tuple[str, ...]) -> None:
    """Hash cached models afresh and compare every file with its pinned sha256 (default: every cached model).

    Exits with code 1 when a file is missing, of another size or another sha256; `models fetch` replaces it.
    """
    from headscope.errors import HeadscopeError
    from headscope.loading.registry import get_entry, list_models, verify

    entries = [get_entry(name) for name in names] if names else [s.entry for s in list_models() if s.cached]
    damaged = 0
    for entry in entries:
        try:
            click.echo(f"{entry.name}: ok, sha256 {verify(entry)}")
        except HeadscopeError as err:
            damaged += 1
            click.echo(f"{entry.name}: {err}", err=True)
    if damaged:
        raise click.ClickException(f"{damaged} of {len(entries)} models failed verification")


@models.command("info")
@click.argument("source", metavar="NAME_OR_PATH")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the config as JSON to this file (- for standard output) instead of the summary.")
def models_info(source: str, json_path: str | None) -> None:
    """Load a model and show its config and hook names.

    NAME_OR_PATH is a registered name, a .gguf file or a model folder.
    """
    from headscope.loading.load import load_model

    model = load_model(source)
    if json_path is None:
        click.echo("\n".join(describe_model(model)))
    elif json_path == "-":
        click.echo(model.cfg.to_json())
    else:
        write_text_atomically(json_path, model.cfg.to_json())
        click.echo(f"wrote JSON to {json_path}")
