"""`headscope capture`: per-head attention statistics over a dataset, written to a folder."""

from __future__ import annotations

import click

from headscope import distributed
from headscope.cli.options import dataset_options, output_folder, parse_bytes, split
from headscope.io import write_text_atomically
from headscope.reports import capture_summary


@click.command()
@click.argument("model_source", metavar="MODEL")
@dataset_options(seq_len=128)
@click.option("--stats", help="Comma-separated statistics (default: all that apply), e.g. prev,induction,entropy.")
@click.option("--patterns", help="Heads whose full patterns to record, e.g. L5H1,L6H0.")
@click.option("--pattern-prompts", default="0", show_default=True, help="Prompts to record patterns of, e.g. 0,3.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Prompts per forward pass (default: from memory).")
@click.option("--max-memory", callback=parse_bytes,
              help="Memory budget for one pass's activations, e.g. 2GB; it sets how many prompts share a pass.")
def capture(model_source: str, dataset: str, seq_len: int | None, num_prompts: int, device: str, seed: int, pack: bool,
            stats: str | None, patterns: str | None, pattern_prompts: str, out: str, batch_size: int | None,
            max_memory: int | None) -> None:
    """Per-head attention statistics over a dataset, written to OUT (stats.json, stats.safetensors).

    An interrupted run continues where it stopped when run again with the same options.
    """
    from headscope.capture.datasets import dataset_for_model
    from headscope.capture.engine import capture as run_capture
    from headscope.loading.load import load_model

    folder = output_folder(out)
    model = load_model(model_source, device=device)
    data = dataset_for_model(model, dataset, seq_len=seq_len, default_seq_len=128, num_prompts=num_prompts,
                             seed=seed, mode="pack" if pack else "pad")
    prompts = [int(p) for p in split(pattern_prompts) or [] if p.isdigit()]
    result = run_capture(model, data, split(stats), batch_size=batch_size, max_memory=max_memory,
                         patterns=split(patterns), pattern_prompts=prompts,
                         patterns_out=folder / "patterns.safetensors" if patterns else None,
                         resume=folder / "progress.safetensors")
    result.meta["seed"] = seed
    if not distributed.is_writer():  # under torchrun, rank 0 writes and prints
        return
    result.save(folder / "stats.safetensors")
    write_text_atomically(folder / "stats.json", result.to_json())
    click.echo("\n".join(capture_summary(result)))
    click.echo(f"wrote {folder}/stats.json, stats.safetensors" + (", patterns.safetensors" if patterns else ""))
