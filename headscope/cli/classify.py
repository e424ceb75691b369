"""`headscope classify`: every head's roles, with scores, intervals, nulls and reasons."""

from __future__ import annotations

import contextlib

import click

from headscope import distributed
from headscope.cli.options import DEFAULT_MODEL, check_outputs, dataset_options, output_folder, report_written
from headscope.io import run_lock, write_text_atomically
from headscope.reports import role_lines


@click.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@dataset_options(seq_len=64)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the role table as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the role table as CSV.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write role heatmaps as a standalone page.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Keep progress in this folder; rerun with the same options to continue after an interruption.")
def classify(model_source: str, dataset: str, seq_len: int | None, num_prompts: int, device: str, seed: int, pack: bool,
             json_path: str | None, csv_path: str | None, html_path: str | None, resume_dir: str | None) -> None:
    """Which heads are previous-token, induction, duplicate-token, sink, self, local heads, with evidence.

    A head gets a role when its score passes the role's threshold and the lower end of its 95% bootstrap
    interval over prompts clears the role's null (uniform attention, or for induction and duplicate-token
    the same positions in a shuffled-token control).
    """
    from headscope.analysis import classify_heads
    from headscope.capture.datasets import dataset_for_model
    from headscope.loading.load import load_model

    check_outputs(json_path, csv_path, html_path)
    with run_lock(output_folder(resume_dir)) if resume_dir and distributed.is_writer() else contextlib.nullcontext():
        model = load_model(model_source, device=device)
        data = dataset_for_model(model, dataset, seq_len=seq_len, num_prompts=num_prompts, seed=seed,
                                 mode="pack" if pack else "pad")
        table = classify_heads(model, data, seed=seed, progress=True, resume=resume_dir)
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
