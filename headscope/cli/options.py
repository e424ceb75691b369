"""Options several commands share, and their parsing: sizes, devices, comma lists, datasets, prompts."""

from __future__ import annotations

import re
from pathlib import Path

import click

from headscope import distributed
from headscope.errors import InputError

DEFAULT_MODEL = "toy-induction-2l"  # ships inside headscope: the main job runs with nothing to download


def parse_bytes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """`2GB`, `512MB`, `1e9` -> bytes."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
    if not match:
        raise click.BadParameter(f"{value!r} is not a size; use e.g. 2GB or 512MB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A device name this machine has; under torchrun, `cuda` becomes each process's own GPU."""
    import torch

    if value.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine; use --device cpu")
    return distributed.local_device(value)


def name_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """`"a,b"` -> ["a", "b"]; an empty entry (`""`, `","`, `"a,,b"`) is refused rather than dropped."""
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    if not all(parts):
        raise click.BadParameter(f"{value!r} has an empty entry: give names separated by commas")
    return parts


def int_list(minimum: int | None = None):
    """A callback for `"0,3"` -> [0, 3]: every entry an integer (at least `minimum`), none dropped."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
        if value is None:
            return None
        numbers = []
        for part in value.split(","):
            try:
                number = int(part.strip())
            except ValueError:
                raise click.BadParameter(f"{part.strip()!r} in {value!r} is not an integer") from None
            if minimum is not None and number < minimum:
                raise click.BadParameter(f"{number} in {value!r} is below {minimum}")
            numbers.append(number)
        return numbers

    return parse


def finite_float(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A float option that refuses NaN and infinities."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def check_outputs(*paths: str | None) -> None:
    """Refuse, before any work, output files whose folder is missing or not writable."""
    from headscope.io import check_writable

    for path in paths:
        if path is not None and path != "-":
            check_writable(path)


def device_option(command):
    """--device, with the check above."""
    return click.option("--device", default="cpu", show_default=True, callback=check_device)(command)


def dataset_options(seq_len: int, several_lengths: bool = False):
    """--dataset, --seq-len, --num-prompts, --device, --seed and --pack: every command that reads a dataset.
    several_lengths: --seq-len takes a comma-separated list (then a list of ints, or None)."""
    seq_len_help = (f"Tokens per prompt without BOS (repeated-random: two periods of seq-len / 2); longer texts "
                    f"are cut.  [default: {seq_len}, or what fits the model's context]")
    seq_len_option = (click.option("--seq-len", callback=int_list(minimum=2), help=seq_len_help + " A comma-separated "
                                   "list, e.g. 128,1024, runs once per length.")
                      if several_lengths else click.option("--seq-len", type=click.IntRange(min=2), help=seq_len_help))
    options = [
        click.option("--dataset", default="repeated-random", show_default=True,
                     help="repeated-random[:period=P][:repeats=R], or a .txt (a prompt per line) or .jsonl file."),
        seq_len_option,
        click.option("--num-prompts", default=16, show_default=True, type=click.IntRange(min=1)),
        device_option,
        click.option("--seed", default=0, show_default=True, help="Seed of every random choice."),
        click.option("--pack", is_flag=True, help="Pack a text file into windows of seq-len tokens instead of "
                                                  "one prompt per line."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def prompt_options(command):
    """--text and --prompt-file: the one prompt of `pattern` and `flow`."""
    command = click.option("--prompt-file", type=click.Path(dir_okay=False),
                           help="A .txt file: its first non-blank line.")(command)
    return click.option("--text", help="The prompt.")(command)


def read_prompt(text: str | None, prompt_file: str | None) -> str:
    """The one prompt given by --text or by the first non-blank line of --prompt-file."""
    if (text is None) == (prompt_file is None):
        raise InputError("give the prompt with exactly one of --text or --prompt-file")
    if prompt_file is not None:
        try:
            lines = Path(prompt_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read prompt file {prompt_file}: {err}") from err
        text = next((line for line in lines if line.strip()), "")
    if not text.strip():
        raise InputError("the prompt is empty")
    return text


def output_folder(out: str) -> Path:
    """The folder `out`, created if missing."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {folder}: {err.strerror}") from err
    return folder


def parse_control(value: str | None) -> int:
    """`--control random:N` -> N draws of random heads (0 without a control)."""
    if value is None:
        return 0
    kind, _, count = value.partition(":")
    if kind != "random" or not count.isdigit() or int(count) < 1:
        raise InputError(f"--control {value!r}: use random:N, e.g. random:100")
    return int(count)


def report_written(**paths: str | None) -> None:
    """`wrote JSON to roles.json` for every output that was asked for."""
    for label, path in paths.items():
        if path:
            click.echo(f"wrote {label} to {path}")
