"""The `headscope` command: a thin layer that parses options, calls the Python API and prints.

Every user error is a `HeadscopeError`; `_Group.invoke` turns it into one `Error: ...` line and exit
code 1, or re-raises it with its traceback under `--debug`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import click

from headscope import __version__
from headscope.errors import HeadscopeError

_DEBUG = "headscope.debug"


class _Group(click.Group):
    """The one place where library errors become command-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadscopeError as err:
            if ctx.meta.get(_DEBUG):
                raise
            raise click.ClickException(" ".join(str(err).splitlines()) or type(err).__name__) from err


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="headscope")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Mechanistic interpretability of attention heads."""
    ctx.meta[_DEBUG] = debug


@cli.group()
def models() -> None:
    """List, fetch and inspect models."""


@models.command("list")
def models_list() -> None:
    """The registered models and where they are cached."""
    from headscope.loading.registry import list_models

    rows = [("name", "architecture", "layers x heads (kv)", "format", "cached")]
    for status in list_models():
        e = status.entry
        rows.append((e.name, e.architecture, f"{e.n_layers} x {e.n_heads} ({e.n_kv_heads})", e.format,
                     str(status.path) if status.cached else "not cached"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


@models.command("fetch")
@click.argument("names", nargs=-1, required=True)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download registered models into the cache.

    The cache is $HEADSCOPE_CACHE, else $XDG_CACHE_HOME/headscope, else ~/.cache/headscope.
    """
    from headscope.loading.registry import fetch, get_entry

    for entry in [get_entry(name) for name in names]:  # check every name before downloading any
        click.echo(f"{entry.name}: {fetch(entry)}")


@models.command("info")
@click.argument("source", metavar="NAME_OR_PATH")
@click.option("--json", "as_json", is_flag=True, help="Print only the config, as JSON.")
def models_info(source: str, as_json: bool) -> None:
    """Load a model and show its config and hook names.

    NAME_OR_PATH is a registered name, a .gguf file or a model folder.
    """
    from headscope.loading.load import load_model

    model = load_model(source)
    click.echo(model.cfg.to_json() if as_json else "\n".join(_describe(model)))


def _describe(model) -> list[str]:
    """The lines of `models info`: source, size, tokenizer, config fields, folded hook names."""
    tok = model.tokenizer
    lines = [f"source: {model.source}",
             f"parameters: {sum(p.numel() for p in model.parameters()):,}",
             "tokenizer: " + (f"vocab {tok.vocab_size}, bos {tok.bos_token_id}, eos {tok.eos_token_id}, "
                              f"pad {tok.pad_token_id}" if tok is not None else "none"),
             "config:"]
    config = model.cfg.to_dict()
    width = max(map(len, config))
    lines += [f"  {key.ljust(width)}  {value}" for key, value in config.items()]
    names = model.hook_names()
    lines.append(f"hook points ({len(names)}):")
    return lines + [f"  {line}" for line in group_hook_names(names)]


def group_hook_names(names: Iterable[str]) -> list[str]:
    """Fold per-layer hook names: `blocks.0.attn.hook_q` ... `blocks.29.attn.hook_q` -> `blocks.{0..29}.attn.hook_q`."""
    layers: dict[str, list[int]] = {}
    for name in names:
        match = re.match(r"blocks\.(\d+)\.(.*)", name)
        key = f"blocks.{{}}.{match.group(2)}" if match else name
        layers.setdefault(key, []).append(int(match.group(1)) if match else -1)
    lines = []
    for key, found in layers.items():
        if found == [-1]:
            lines.append(key)
            continue
        found = sorted(set(found))
        contiguous = found == list(range(found[0], found[-1] + 1))
        span = f"{found[0]}..{found[-1]}" if contiguous and len(found) > 1 else ",".join(map(str, found))
        lines.append(key.replace("{}", f"{{{span}}}", 1))
    return lines


def main() -> None:
    cli(prog_name="headscope")


if __name__ == "__main__":
    main()
