"""`headscope capture`: per-head attention statistics over a dataset, written to a folder."""

from __future__ import annotations

import contextlib

import click

from headscope import distributed
from headscope.cli.options import dataset_options, int_list, name_list, output_folder, parse_bytes
from headscope.io import run_lock, write_text_atomically
from headscope.reports import capture_summary


@click.command()
@click.argument("model_source", metavar="MODEL")
@dataset_options(seq_len=128)
@click.option("--stats", callback=name_list, help="Comma-separated statistics (default: all that apply), e.g. prev,induction,entropy.")
@click.option("--patterns", callback=name_list, help="Heads whose full patterns to record, e.g. L5H1,L6H0.")
@click.option("--pattern-prompts", default="0", show_default=True, callback=int_list(minimum=0), help="Prompts to record patterns of, e.g. 0,3.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Prompts per forward pass (default: from memory).")
@click.option("--max-memory", callback=parse_bytes,
              help="Memory budget for one pass's activations, e.g. 2GB; it sets how many prompts share a pass.")
def capture(model_source: str, dataset: str, seq_len: int | None, num_prompts: int, device: str, seed: int, pack: bool,
            stats: list[str] | None, patterns: list[str] | None, pattern_prompts: list[int], out: str, batch_size: int | None,
            max_memory: int | None) -> None:
    """Per-head attention statistics over a dataset, written to OUT (stats.json, stats.safetensors).

    An interrupted run continues where it stopped when run again with the same options; a run into a
    folder another run is writing is refused.
    """
    folder = output_folder(out)
    # a second run into the same folder is refused, not mixed in (under torchrun, rank 0 holds the lock)
    with run_lock(folder) if distributed.is_writer() else contextlib.nullcontext():
        _capture(folder, model_source, dataset, seq_len, num_prompts, device, seed, pack, stats, patterns,
                 pattern_prompts, batch_size, max_memory)


def _capture(folder, model_source, dataset, seq_len, num_prompts, device, seed, pack, stats, patterns,
             pattern_prompts, batch_size, max_memory) -> None:
    from headscope.capture.datasets import dataset_for_model
    from headscope.capture.engine import capture as run_capture
    from headscope.loading.load import load_model

    model = load_model(model_source, device=device)
    data = dataset_for_model(model, dataset, seq_len=seq_len, default_seq_len=128, num_prompts=num_prompts,
                             seed=seed, mode="pack" if pack else "pad")
    result = run_capture(model, data, stats, batch_size=batch_size, max_memory=max_memory,
                         patterns=patterns, pattern_prompts=pattern_prompts,
                         patterns_out=folder / "patterns.safetensors" if patterns else None,
                         resume=folder / "progress.safetensors")
    result.meta["seed"] = seed
    if not distributed.is_writer():  # under torchrun, rank 0 writes and prints
        return
    result.save(folder / "stats.safetensors")
    write_text_atomically(folder / "stats.json", result.to_json())
    click.echo("\n".join(capture_summary(result)))
    click.echo(f"wrote {folder}/stats.json, stats.safetensors" + (", patterns.safetensors" if patterns else ""))
