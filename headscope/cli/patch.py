"""`headscope patch` and `headscope pairs`: causal experiments on prompt pairs (activation, path and attribution
patching), and the pairs they run on."""

from __future__ import annotations

import json

import click

from headscope.cli.options import device_option, parse_control, report_written
from headscope.errors import InputError
from headscope.io import write_text_atomically

METRIC_CHOICES = ["logit-diff", "normalized-logit-diff", "answer-prob", "loss", "kl", "cosine"]


@click.command()
@click.argument("model_source", metavar="MODEL")
@click.option("--pairs", "pairs_path", required=True, type=click.Path(dir_okay=False),
              help='Prompt pairs: a .jsonl of {"clean", "corrupted", "answer", "wrong"} (see `headscope pairs`).')
@click.option("--heads", help="Patch these heads together, e.g. L9H9,L10H0.")
@click.option("--sweep", type=click.Choice(["head", "head-pos", "resid", "q", "k", "v", "pattern"]),
              help="Patch every head's output (head), every head at every position, the residual stream at every "
                   "layer and position, or one input of every head.")
@click.option("--path", "path_spec", help="Path patching SENDERS:RECEIVERS, e.g. L0H1:L1H0,L1H3; '*:L1H0' sweeps "
                                          "every earlier sender; 'L9H9' alone with --via logits is the direct path.")
@click.option("--via", type=click.Choice(["q", "k", "v", "logits"]), help="The receivers' input a path goes through.")
@click.option("--site", type=click.Choice(["z", "q", "k", "v", "pattern"]), default="z", show_default=True,
              help="With --heads: what of each head is patched.")
@click.option("--held-out", "held_out", type=click.IntRange(min=1),
              help="Pick this many heads by a head sweep on half the pairs, patch them on the other half.")
@click.option("--control", help="random:N: N draws of as many random heads from the same layers (with --heads "
                                "or --held-out).")
@click.option("--method", type=click.Choice(["exact", "atp", "atp*"]), default="exact", show_default=True,
              help="Exact patching, or attribution patching of a --sweep.")
@click.option("--denoise", is_flag=True, help="Patch clean activations into the corrupted run (default: corrupted "
                                              "into clean).")
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default="logit-diff", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the split, the draws and the bootstrap.")
@device_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a heatmap or bar chart page.")
def patch(model_source: str, pairs_path: str, heads: str | None, sweep: str | None, path_spec: str | None,
          via: str | None, site: str, held_out: int | None, control: str | None, method: str, denoise: bool,
          metric: str, seed: int, device: str, json_path: str | None, html_path: str | None) -> None:
    """Activation, path and attribution patching on prompt pairs: clean and corrupted baselines and effects."""
    from headscope.analysis.patching.experiment import run_patching
    from headscope.analysis.patching.pairs import read_pairs
    from headscope.loading.load import load_model
    from headscope.reports import patch_lines

    if sum(x is not None for x in (heads, sweep, path_spec, held_out)) != 1:
        raise InputError("choose what to patch with exactly one of --heads, --sweep, --path or --held-out")
    draws = parse_control(control)
    model = load_model(model_source, device=device)
    pairs = read_pairs(pairs_path, model.tokenizer)
    result = run_patching(model, pairs, heads=heads, sweep=sweep, path_spec=path_spec, via=via, site=site,
                          method=method, denoise=denoise, metric=metric, held_out=held_out, control=draws,
                          seed=seed, progress=True)
    click.echo("\n".join(patch_lines(result)))
    if json_path:
        write_text_atomically(json_path, result.to_json())
    if html_path:
        from headscope.viz import write_html
        from headscope.viz.patching import patching_figure

        tokens = model.to_str_tokens(pairs.clean.tokens[0]) if model.tokenizer is not None else None
        write_html(patching_figure(result, tokens), html_path)
    report_written(JSON=json_path, HTML=html_path)


@click.command()
@click.argument("task", type=click.Choice(["ioi", "induction"]))
@click.argument("model_source", metavar="MODEL")
@click.option("--n", default=64, show_default=True, type=click.IntRange(min=1), help="Number of pairs.")
@click.option("--seed", default=0, show_default=True)
@click.option("--period", default=8, show_default=True, type=click.IntRange(min=2),
              help="induction: random tokens before they repeat.")
def pairs(task: str, model_source: str, n: int, seed: int, period: int) -> None:
    """Generate prompt pairs for `headscope patch` as JSONL on stdout (IOI or induction)."""
    from headscope.analysis.patching.generate import generate_records
    from headscope.loading.load import load_model

    model = load_model(model_source)
    click.echo("\n".join(json.dumps(r) for r in generate_records(task, model.tokenizer, n, seed, period)))
