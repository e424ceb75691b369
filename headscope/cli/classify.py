"""`headscope classify`: every head's roles, with scores, intervals, nulls and reasons."""

from __future__ import annotations

import contextlib

import click

from headscope import distributed
from headscope.cli.options import (DEFAULT_MODEL, check_outputs, dataset_options, name_list, output_folder,
                                   report_written)
from headscope.errors import InputError
from headscope.io import run_lock, write_text_atomically
from headscope.reports import role_lines


@click.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@dataset_options(seq_len=64, several_lengths=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the role table as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the role table as CSV.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write role heatmaps as a standalone page.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Keep progress in this folder; rerun with the same options to continue after an interruption.")
@click.option("--roles", "roles", callback=name_list,
              help="Comma-separated roles to score, e.g. induction,retrieval (optional built-in roles such as "
                   "retrieval and copy_suppression only this way).  [default: every role that applies]")
@click.option("--role", help="With several --seq-len values: the role whose score by length the table and figure "
                             "follow.  [default: induction, or the first of --roles]")
def classify(model_source: str, dataset: str, seq_len: list[int] | None, num_prompts: int, device: str, seed: int,
             pack: bool, json_path: str | None, csv_path: str | None, html_path: str | None, resume_dir: str | None,
             roles: list[str] | None, role: str | None) -> None:
    """Which heads are previous-token, induction, duplicate-token, sink, self, local heads, with evidence.

    A head gets a role when its score passes the role's threshold and the lower end of its 95% bootstrap
    interval over prompts clears the role's null (uniform attention, or for induction and duplicate-token
    the same positions in a shuffled-token control). Several --seq-len values (e.g. 128,1024) classify once
    per length and report each head's --role score by length; --json, --csv and --html then hold the sweep.
    --roles scores only the roles named (and only their captures run); the outputs hold only those.
    """
    if seq_len is not None and len(seq_len) > 1:
        return _across_lengths(model_source, dataset, seq_len, num_prompts, device, seed, pack, json_path,
                               csv_path, html_path, resume_dir, roles, role)
    if role is not None:
        raise InputError("--role follows a role across lengths: give several --seq-len values, e.g. 128,1024")
    seq_len = seq_len[0] if seq_len else None
    from headscope.analysis import classify_heads
    from headscope.capture.datasets import dataset_for_model
    from headscope.loading.load import load_model

    check_outputs(json_path, csv_path, html_path)
    with run_lock(output_folder(resume_dir)) if resume_dir and distributed.is_writer() else contextlib.nullcontext():
        model = load_model(model_source, device=device)
        data = dataset_for_model(model, dataset, seq_len=seq_len, num_prompts=num_prompts, seed=seed,
                                 mode="pack" if pack else "pad")
        table = classify_heads(model, data, seed=seed, progress=True, resume=resume_dir, roles=roles)
    if not distributed.is_writer():  # under torchrun, rank 0 writes and prints
        return
    click.echo("\n".join(role_lines(table)))
    if json_path:
        write_text_atomically(json_path, table.to_json())
    if csv_path:
        write_text_atomically(csv_path, table.to_csv())
    if html_path:
        from headscope.viz import role_heatmap, write_html

        write_html(role_heatmap(table, style="screen"), html_path)
    report_written(JSON=json_path, CSV=csv_path, HTML=html_path)


def _across_lengths(model_source, dataset, seq_lens, num_prompts, device, seed, pack, json_path, csv_path,
                    html_path, resume_dir, roles, role) -> None:
    from headscope.analysis.lengths import classify_across_lengths
    from headscope.loading.load import load_model
    from headscope.reports import length_lines

    check_outputs(json_path, csv_path, html_path)
    with run_lock(output_folder(resume_dir)) if resume_dir and distributed.is_writer() else contextlib.nullcontext():
        model = load_model(model_source, device=device)
        sweep = classify_across_lengths(model, seq_lens, dataset, role=role, roles=roles, num_prompts=num_prompts, seed=seed,
                                        mode="pack" if pack else "pad", progress=True, resume=resume_dir)
    if not distributed.is_writer():
        return
    click.echo("\n".join(length_lines(sweep)))
    if json_path:
        write_text_atomically(json_path, sweep.to_json())
    if csv_path:
        write_text_atomically(csv_path, sweep.to_csv())
    if html_path:
        from headscope.viz import length_page, write_page

        write_page(length_page(sweep), html_path)
    report_written(JSON=json_path, CSV=csv_path, HTML=html_path)
