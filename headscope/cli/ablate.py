"""`headscope ablate`: the change in a metric when heads are zero-, mean- or resample-ablated, or their
attention to chosen keys is cut."""

from __future__ import annotations

import click

from headscope import distributed
from headscope.cli.options import (DEFAULT_MODEL, check_outputs, dataset_options, int_list, name_list, parse_bytes,
                                   parse_control, report_written)
from headscope.errors import InputError
from headscope.io import write_text_atomically
from headscope.reports import ablation_lines


@click.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@dataset_options(seq_len=64)
@click.option("--heads", callback=name_list, help="Ablate these heads together, e.g. L1H6,L0H3.")
@click.option("--role", help="Ablate every head holding this role in --roles, e.g. induction.")
@click.option("--roles", "roles_path", type=click.Path(exists=True, dir_okay=False), help="A roles.json.")
@click.option("--sweep", "by", type=click.Choice(["head", "layer"]), help="Ablate every head (or layer) alone.")
@click.option("--method", type=click.Choice(["zero", "mean", "resample"]), default="zero", show_default=True)
@click.option("--knockout", "knockout_keys", callback=int_list(), help="Instead of removing the heads' output, cut only their attention "
                                                  "to these key positions, e.g. 0 (the BOS sink) or 0,3.")
@click.option("--held-out", "held_out", type=click.IntRange(min=1),
              help="Pick this many heads by a head sweep on half the prompts, ablate them on the other half.")
@click.option("--control", help="random:N: also ablate N draws of as many random heads from the same layers "
                                "(with --heads, --role or --held-out).")
@click.option("--metric", type=click.Choice(["loss", "induction-loss", "kl", "logit-diff", "cosine"]), default="loss",
              show_default=True, help="cosine: for encoders, the mean-pooled embedding against the clean run's.")
@click.option("--pairs", type=click.Path(dir_okay=False),
              help='logit-diff prompts: a .jsonl of {"prompt", "answer", "wrong"}.')
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the effects as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a heatmap or bar chart page.")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False),
              help="With --sweep: keep finished variants in this file; rerun with the same options to continue.")
@click.option("--max-memory", callback=parse_bytes,
              help="With --sweep: memory budget for one pass's activations, e.g. 2GB; it sets how many ablated "
                   "variants share a pass.  [default: 1GB]")
def ablate(model_source: str, dataset: str, seq_len: int | None, num_prompts: int, device: str, seed: int, pack: bool,
           heads: list[str] | None, role: str | None, roles_path: str | None, by: str | None, method: str,
           knockout_keys: list[int] | None, held_out: int | None, control: str | None, metric: str, pairs: str | None,
           json_path: str | None,
           html_path: str | None, resume_path: str | None, max_memory: int | None) -> None:
    """What heads are for: the change in a metric when they are zero-, mean- or resample-ablated."""
    from headscope.analysis import ablation, controls, metrics
    from headscope.analysis.patching.pairs import pairs_dataset
    from headscope.capture.datasets import dataset_for_model
    from headscope.loading.load import load_model

    _check_choices(heads, role, roles_path, by, knockout_keys, metric, pairs, resume_path, max_memory, held_out)
    check_outputs(json_path, html_path, resume_path)
    draws = parse_control(control)
    if draws and (by or knockout_keys):
        raise InputError("--control random:N compares named heads (--heads, --role) or a --held-out selection with "
                         "random ones")
    model = load_model(model_source, device=device)
    answers = wrongs = None
    if pairs:
        data, answers, wrongs = pairs_dataset(pairs, model.tokenizer)
        chosen_metric = metrics.logit_diff_metric(answers, wrongs)
    else:
        data = dataset_for_model(model, dataset, seq_len=seq_len, num_prompts=num_prompts, seed=seed,
                                 mode="pack" if pack else "pad")
        chosen_metric = metric
    if held_out:
        result = controls.held_out_ablation(model, data, held_out, method=method, metric=chosen_metric, n_draws=draws,
                                            seed=seed, answers=answers, wrongs=wrongs)
    elif by:
        result = ablation.sweep(model, data, method, chosen_metric, by=by, seed=seed, resume=resume_path,
                                max_memory=max_memory or ablation.SWEEP_MEMORY, progress=True)
    else:
        targets = _targets(model, heads, role, roles_path)
        if knockout_keys:
            result = ablation.knockout(model, data, targets, knockout_keys, chosen_metric, seed=seed)
        elif draws:
            result = controls.ablate_with_control(model, data, targets, method=method, metric=chosen_metric,
                                                  n_draws=draws, seed=seed)
        else:
            result = ablation.ablate(model, data, targets, method, chosen_metric, seed=seed)
    if not distributed.is_writer():  # under torchrun, rank 0 writes and prints
        return
    click.echo("\n".join(ablation_lines(result)))
    if json_path:
        write_text_atomically(json_path, result.to_json())
    if html_path:
        from headscope.viz import effects_figure, write_html

        write_html(effects_figure(result, model.cfg.n_layers, model.cfg.n_heads, style="screen"), html_path)
    report_written(JSON=json_path, HTML=html_path)


def _check_choices(heads, role, roles_path, by, knockout_keys, metric, pairs, resume_path, max_memory,
                   held_out) -> None:
    """Refuse option combinations that cannot be honoured, before anything is loaded."""
    if sum(x is not None for x in (heads, role, by, held_out)) != 1:
        raise InputError("choose what to ablate with exactly one of --heads, --role (with --roles), --sweep or "
                         "--held-out")
    if knockout_keys and held_out:
        raise InputError("--knockout cuts the attention of named heads (--heads or --role), not a --held-out selection")
    if role and not roles_path:
        raise InputError("--role needs --roles roles.json (from `headscope classify --json`)")
    if knockout_keys and by:
        raise InputError("--knockout cuts the attention of named heads (--heads or --role), not a --sweep")
    if (metric == "logit-diff") != (pairs is not None):
        raise InputError("--metric logit-diff and --pairs FILE go together")
    if (resume_path or max_memory) and not by:
        raise InputError("--resume and --max-memory are for a --sweep; a single ablation is one pass")
    if distributed.launched_by_torchrun() and not by:
        raise InputError("under torchrun, ablate splits a --sweep across processes; run --heads or --role as one "
                         "process")


def _targets(model, heads: list[str] | None, role: str | None, roles_path: str | None) -> list[tuple[int, int]]:
    """The heads named by --heads, or those holding --role in --roles."""
    from headscope.analysis.roles import RoleTable
    from headscope.heads import parse_heads

    if not role:
        return parse_heads(heads, model.cfg.n_layers, model.cfg.n_heads)
    targets = [(r.layer, r.head) for r in RoleTable.read(roles_path).with_role(role)]
    if not targets:
        raise InputError(f"no head holds the role {role!r} in {roles_path}")
    return targets
