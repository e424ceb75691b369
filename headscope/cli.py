"""The `headscope` command: a thin layer that parses options, calls the Python API and prints.

Every user error is a `HeadscopeError`; `_Group.invoke` turns it into one `Error: ...` line and exit
code 1, or re-raises it with its traceback under `--debug`.

Launched by torchrun (`torchrun --nproc-per-node N -m headscope capture|classify|ablate --sweep ...`), every
process joins the process group, takes its shard of the work, and only rank 0 prints and writes files.
"""

from __future__ import annotations

import re

import click

from headscope import __version__
from headscope import distributed
from headscope.errors import HeadscopeError, InputError
from headscope.io import write_text_atomically
from headscope.reports import ablation_lines, capture_summary, describe_model, role_lines

_DEBUG = "headscope.debug"
_SHARDED_COMMANDS = ("capture", "classify", "ablate")  # what torchrun may launch; `ablate` only with --sweep


class _Group(click.Group):
    """The one place where library errors become command-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadscopeError as err:
            if ctx.meta.get(_DEBUG):
                raise
            message = " ".join(str(err).splitlines()) or type(err).__name__
            if distributed.launched_by_torchrun():
                message = f"[rank {distributed.rank()}] {message}"
            raise click.ClickException(message) from err


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="headscope")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Mechanistic interpretability of attention heads."""
    ctx.meta[_DEBUG] = debug
    if distributed.launched_by_torchrun():
        if ctx.invoked_subcommand not in _SHARDED_COMMANDS:
            raise InputError(f"`headscope {ctx.invoked_subcommand}` does not run across processes: run it without "
                             f"torchrun (torchrun can launch {', '.join(_SHARDED_COMMANDS)} --sweep)")
        distributed.init_from_environment()
        ctx.call_on_close(distributed.close)


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
    click.echo(model.cfg.to_json() if as_json else "\n".join(describe_model(model)))


def _parse_bytes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """`2GB`, `512MB`, `1e9` -> bytes."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
    if not match:
        raise click.BadParameter(f"{value!r} is not a size; use e.g. 2GB or 512MB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    import torch

    if value.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine; use --device cpu")
    return distributed.local_device(value)  # under torchrun, `cuda` is each process's own GPU


def _split(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def _dataset_options(seq_len: int):
    """--dataset, --seq-len, --num-prompts, --device and --seed: every command that reads a dataset has them."""
    options = [
        click.option("--dataset", default="repeated-random", show_default=True,
                     help="repeated-random[:period=P][:repeats=R], or a .txt (a prompt per line) or .jsonl file."),
        click.option("--seq-len", type=click.IntRange(min=2),
                     help=f"Tokens per prompt without BOS (repeated-random: two periods of seq-len / 2); longer "
                          f"texts are cut.  [default: {seq_len}, or what fits the model's context]"),
        click.option("--num-prompts", default=16, show_default=True, type=click.IntRange(min=1)),
        click.option("--device", default="cpu", show_default=True, callback=_check_device),
        click.option("--seed", default=0, show_default=True, help="Seed of every random choice."),
        click.option("--pack", is_flag=True, help="Pack a text file into windows of seq-len tokens instead of "
                                                  "one prompt per line."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


DEFAULT_MODEL = "toy-induction-2l"  # ships inside headscope: the main job runs with nothing to download


def _fit_seq_len(seq_len: int | None, default: int, model) -> int:
    """The asked length, or the default cut to the model's context (BOS and a frame take a few tokens)."""
    return seq_len if seq_len is not None else min(default, model.cfg.n_ctx - 2)


@cli.command()
@click.argument("model_source", metavar="MODEL")
@_dataset_options(seq_len=128)
@click.option("--stats", help="Comma-separated statistics (default: all that apply), e.g. prev,induction,entropy.")
@click.option("--patterns", help="Heads whose full patterns to record, e.g. L5H1,L6H0.")
@click.option("--pattern-prompts", default="0", show_default=True, help="Prompts to record patterns of, e.g. 0,3.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Prompts per forward pass (default: from memory).")
@click.option("--max-memory", callback=_parse_bytes, help="Memory budget for activations, e.g. 2GB.")
def capture(model_source: str, dataset: str, seq_len: int | None, num_prompts: int, device: str, seed: int, pack: bool,
            stats: str | None, patterns: str | None, pattern_prompts: str, out: str, batch_size: int | None,
            max_memory: int | None) -> None:
    """Per-head attention statistics over a dataset, written to OUT (stats.json, stats.safetensors).

    An interrupted run continues where it stopped when run again with the same options.
    """
    from headscope.capture.datasets import dataset_for_model
    from headscope.capture.engine import capture as run_capture
    from headscope.loading.load import load_model

    folder = _output_folder(out)
    model = load_model(model_source, device=device)
    data = dataset_for_model(model, dataset, seq_len=_fit_seq_len(seq_len, 128, model), num_prompts=num_prompts, seed=seed,
                             mode="pack" if pack else "pad")
    prompts = [int(p) for p in _split(pattern_prompts) or [] if p.isdigit()]
    result = run_capture(model, data, _split(stats), batch_size=batch_size, max_memory=max_memory,
                         patterns=_split(patterns), pattern_prompts=prompts,
                         patterns_out=folder / "patterns.safetensors" if patterns else None,
                         resume=folder / "progress.safetensors")
    result.meta["seed"] = seed
    if not distributed.is_writer():  # under torchrun, rank 0 writes and prints
        return
    result.save(folder / "stats.safetensors")
    write_text_atomically(folder / "stats.json", result.to_json())
    click.echo("\n".join(capture_summary(result)))
    click.echo(f"wrote {folder}/stats.json, stats.safetensors" + (", patterns.safetensors" if patterns else ""))


@cli.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@_dataset_options(seq_len=64)
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

    model = load_model(model_source, device=device)
    data = dataset_for_model(model, dataset, seq_len=_fit_seq_len(seq_len, 64, model), num_prompts=num_prompts,
                             seed=seed, mode="pack" if pack else "pad")
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

        write_html(role_heatmap(table), html_path)
    for label, path in (("JSON", json_path), ("CSV", csv_path), ("HTML", html_path)):
        if path:
            click.echo(f"wrote {label} to {path}")


@cli.command()
@click.argument("model_source", metavar="MODEL")
@click.argument("head_name", metavar="HEAD")
@click.option("--text", help="The prompt.")
@click.option("--prompt-file", type=click.Path(dir_okay=False), help="A .txt file: its first non-blank line.")
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False), help="The page to write.")
@click.option("--device", default="cpu", show_default=True, callback=_check_device)
def pattern(model_source: str, head_name: str, text: str | None, prompt_file: str | None, html_path: str,
            device: str) -> None:
    """An interactive view of one head's attention (e.g. L18H6) on one prompt, tokens on both axes."""
    from headscope.heads import parse_heads
    from headscope.loading.load import load_model
    from headscope.viz import pattern_figure, write_html

    text = _prompt(text, prompt_file)
    model = load_model(model_source, device=device)
    [(layer, head)] = parse_heads(head_name, model.cfg.n_layers, model.cfg.n_heads)[:1]
    tokens = model.to_tokens(text)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    figure = pattern_figure(cache[name][0, head].cpu(), model.to_str_tokens(tokens[0]),
                            f"{model.source}: L{layer}H{head} attention", causal=model.cfg.causal)
    write_html(figure, html_path)
    click.echo(f"wrote {html_path}")


def _prompt(text: str | None, prompt_file: str | None) -> str:
    """The one prompt given by --text or by the first non-blank line of --prompt-file."""
    from pathlib import Path

    from headscope.errors import InputError

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


_FLOW_SUFFIXES = (".graphml", ".gexf", ".json", ".dot", ".html", ".svg", ".pdf")


@cli.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@click.option("--text", help="The prompt.")
@click.option("--prompt-file", type=click.Path(dir_okay=False), help="A .txt file: its first non-blank line.")
@click.option("--method", type=click.Choice(["rollout", "maxflow", "composition", "ablation"]), default="rollout",
              show_default=True, help="Token flow (rollout, maxflow); head composition from the weights; or the "
                                      "composition graph's edges weighted by measured path ablation.")
@click.option("--composition", "kind", type=click.Choice(["q", "k", "v"]), default="k", show_default=True,
              help="With --method composition: Q-, K- or V-composition.")
@click.option("--roles", "roles_path", type=click.Path(exists=True, dir_okay=False),
              help="A roles.json from `headscope classify`, to label the heads of a composition graph.")
@click.option("--target-pos", default=-1, show_default=True, help="The output position the flow goes to.")
@click.option("--gradient", is_flag=True, help="Weight attention by its gradient for the predicted token's logit.")
@click.option("--heads", help="Average only these heads, e.g. L1H6,L0H3 (default: every head).")
@click.option("--threshold", type=float, help="Leave out edges weaker than this.")
@click.option("--top-k", type=int, help="Keep the k strongest edges into each node.")
@click.option("--out", "outs", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Output file; the suffix picks the format: " + ", ".join(_FLOW_SUFFIXES) + ". Repeatable.")
@click.option("--device", default="cpu", show_default=True, callback=_check_device)
def flow(model_source: str, text: str | None, prompt_file: str | None, method: str, kind: str,
         roles_path: str | None, target_pos: int, gradient: bool, heads: str | None, threshold: float | None, top_k: int | None,
         outs: tuple[str, ...], device: str) -> None:
    """How attention carries information from each token to a target position (Abnar & Zuidema 2020):
    rollout or max-flow through the layers, as a graph file or an interactive page; or, with
    --method composition, which heads read what earlier heads write (Elhage et al. 2021), from the weights."""
    from pathlib import Path

    from headscope.analysis.flow import token_flow
    from headscope.errors import InputError
    from headscope.export import write_graph
    from headscope.heads import parse_heads
    from headscope.loading.load import load_model
    from headscope.viz import flow_figure, write_figure

    bad = [o for o in outs if Path(o).suffix.lower() not in _FLOW_SUFFIXES]
    if bad:
        raise InputError(f"unknown output format {Path(bad[0]).suffix or '(no suffix)'!r} for {bad[0]}: "
                         f"use {', '.join(_FLOW_SUFFIXES)}")
    if method in ("composition", "ablation"):
        _composition(model_source, kind, roles_path, threshold, top_k, outs, device, measured=method == "ablation")
        return
    prompt = _prompt(text, prompt_file)
    model = load_model(model_source, device=device)
    chosen = parse_heads(heads, model.cfg.n_layers, model.cfg.n_heads) if heads else None
    built = token_flow(model, model.to_tokens(prompt), method, target_pos, chosen, threshold, top_k, gradient)
    built.graph.graph["n_layers"] = built.n_layers
    for out in outs:
        if Path(out).suffix.lower() in (".html", ".svg", ".pdf"):
            title = f"{model.source}: {method} to position {built.graph.graph['target']}"
            write_figure(flow_figure(built.graph, title), out)
        else:
            write_graph(built.graph, out)
        click.echo(f"wrote {out}")


def _composition(model_source, kind, roles_path, threshold, top_k, outs, device, measured: bool) -> None:
    from pathlib import Path

    from headscope.analysis.composition import composition_graph
    from headscope.analysis.roles import RoleTable
    from headscope.errors import InputError
    from headscope.export import write_graph
    from headscope.loading.load import load_model

    if any(Path(o).suffix.lower() in (".html", ".svg", ".pdf") for o in outs):
        raise InputError("a composition graph is written as .graphml, .gexf or .json")
    model = load_model(model_source, device=device)
    roles = RoleTable.from_json(Path(roles_path).read_text()) if roles_path else None
    if roles is not None and (roles.n_layers, roles.n_heads) != (model.cfg.n_layers, model.cfg.n_heads):
        raise InputError(f"{roles_path} describes {roles.n_layers} x {roles.n_heads} heads, the model has "
                         f"{model.cfg.n_layers} x {model.cfg.n_heads}")
    if measured:  # each of the k strongest edges into a head, re-weighted by its path-ablation effect on loss
        from headscope.analysis.composition import measured_composition_graph
        from headscope.capture.datasets import dataset_for_model

        data = dataset_for_model(model, "repeated-random", seq_len=_fit_seq_len(None, 64, model), num_prompts=8)
        graph = measured_composition_graph(model, data, kind, top_k if top_k is not None else 3, "loss", roles)
    else:
        graph = composition_graph(model, kind, threshold, top_k if top_k is not None else 3, roles)
    for out in outs:
        write_graph(graph, out)
        click.echo(f"wrote {out}")


@cli.command()
@click.argument("model_source", metavar="[MODEL]", default=DEFAULT_MODEL, required=False)
@_dataset_options(seq_len=64)
@click.option("--heads", help="Ablate these heads together, e.g. L1H6,L0H3.")
@click.option("--role", help="Ablate every head holding this role in --roles, e.g. induction.")
@click.option("--roles", "roles_path", type=click.Path(exists=True, dir_okay=False), help="A roles.json.")
@click.option("--sweep", "by", type=click.Choice(["head", "layer"]), help="Ablate every head (or layer) alone.")
@click.option("--method", type=click.Choice(["zero", "mean", "resample"]), default="zero", show_default=True)
@click.option("--knockout", "knockout_keys", help="Instead of removing the heads' output, cut only their attention "
                                                  "to these key positions, e.g. 0 (the BOS sink) or 0,3.")
@click.option("--metric", type=click.Choice(["loss", "induction-loss", "kl", "logit-diff"]), default="loss",
              show_default=True)
@click.option("--pairs", type=click.Path(dir_okay=False),
              help='logit-diff prompts: a .jsonl of {"prompt", "answer", "wrong"}.')
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the effects as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a heatmap or bar chart page.")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False),
              help="With --sweep: keep finished variants in this file; rerun with the same options to continue.")
@click.option("--max-memory", callback=_parse_bytes,
              help="With --sweep: memory for the ablated variants stacked in one pass, e.g. 2GB.  [default: 1GB]")
def ablate(model_source: str, dataset: str, seq_len: int | None, num_prompts: int, device: str, seed: int, pack: bool,
           heads: str | None, role: str | None, roles_path: str | None, by: str | None, method: str,
           knockout_keys: str | None, metric: str, pairs: str | None, json_path: str | None,
           html_path: str | None, resume_path: str | None, max_memory: int | None) -> None:
    """What heads are for: the change in a metric when they are zero-, mean- or resample-ablated."""
    from pathlib import Path

    from headscope.analysis import ablation, metrics
    from headscope.analysis.roles import RoleTable
    from headscope.capture.datasets import dataset_for_model
    from headscope.errors import InputError
    from headscope.heads import parse_heads
    from headscope.loading.load import load_model

    if sum(x is not None for x in (heads, role, by)) != 1:
        raise InputError("choose what to ablate with exactly one of --heads, --role (with --roles) or --sweep")
    if knockout_keys and by:
        raise InputError("--knockout cuts the attention of named heads (--heads or --role), not a --sweep")
    if (metric == "logit-diff") != (pairs is not None):
        raise InputError("--metric logit-diff and --pairs FILE go together")
    if (resume_path or max_memory) and not by:
        raise InputError("--resume and --max-memory are for a --sweep; a single ablation is one pass")
    if distributed.launched_by_torchrun() and not by:
        raise InputError("under torchrun, ablate splits a --sweep across processes; run --heads or --role as one "
                         "process")
    model = load_model(model_source, device=device)
    if pairs:
        data, answers, wrongs = metrics.pairs_dataset(pairs, model.tokenizer)
        chosen_metric = metrics.logit_diff_metric(answers, wrongs)
    else:
        data = dataset_for_model(model, dataset, seq_len=_fit_seq_len(seq_len, 64, model), num_prompts=num_prompts,
                                 seed=seed, mode="pack" if pack else "pad")
        chosen_metric = metric
    if by:
        result = ablation.sweep(model, data, method, chosen_metric, by=by, seed=seed, resume=resume_path,
                                max_memory=max_memory or ablation.SWEEP_MEMORY, progress=True)
    else:
        if role:
            if not roles_path:
                raise InputError("--role needs --roles roles.json (from `headscope classify --json`)")
            targets = [(r.layer, r.head) for r in RoleTable.from_json(Path(roles_path).read_text()).with_role(role)]
            if not targets:
                raise InputError(f"no head holds the role {role!r} in {roles_path}")
        else:
            targets = parse_heads(heads, model.cfg.n_layers, model.cfg.n_heads)
        if knockout_keys:
            keys = [int(k) for k in _split(knockout_keys) or [] if k.lstrip("-").isdigit()]
            result = ablation.knockout(model, data, targets, keys, chosen_metric, seed=seed)
        else:
            result = ablation.ablate(model, data, targets, method, chosen_metric, seed=seed)
    if not distributed.is_writer():  # under torchrun, rank 0 writes and prints
        return
    click.echo("\n".join(ablation_lines(result, metric)))
    if json_path:
        write_text_atomically(json_path, result.to_json())
    if html_path:
        from headscope.viz import ablation_figure, write_html

        write_html(ablation_figure(result, model.cfg.n_layers, model.cfg.n_heads), html_path)
    for label, path in (("JSON", json_path), ("HTML", html_path)):
        if path:
            click.echo(f"wrote {label} to {path}")


@cli.command("train")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--data", type=click.Choice(["repeated-random", "stdlib"]), default="repeated-random", show_default=True,
              help="Repeated random segments, or the Python standard library's source as bytes.")
@click.option("--corpus", type=click.Path(), help="With --data stdlib: another folder of .py/.txt files.")
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--d-model", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--mlp", default=0, show_default=True, type=click.IntRange(min=0), help="MLP width; 0 = attention-only.")
@click.option("--no-layernorm", is_flag=True)
@click.option("--steps", default=800, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--lr", default=3e-3, show_default=True, type=float)
@click.option("--seq-len", default=40, show_default=True, type=int)
@click.option("--eval-every", default=100, show_default=True, type=int)
@click.option("--checkpoint-every", default=200, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, callback=_check_device)
def train_command(out_dir: str, data: str, corpus: str | None, layers: int, heads: int, d_model: int, mlp: int,
                  no_layernorm: bool, steps: int, batch_size: int, lr: float, seq_len: int, eval_every: int,
                  checkpoint_every: int, seed: int, device: str) -> None:
    """Train an attention-only toy model into OUT_DIR (checkpoints step-N/, log.json); rerun to resume."""
    from headscope.errors import InputError
    from headscope.training import TrainConfig, train

    if d_model % heads:
        raise InputError(f"--d-model ({d_model}) must be divisible by --heads ({heads})")
    config = TrainConfig(
        n_layers=layers, n_heads=heads, d_model=d_model, d_head=d_model // heads, d_mlp=mlp,
        layernorm=not no_layernorm, data=data, corpus_dir=corpus, vocab=256 if data == "stdlib" else 64,
        seq_len=seq_len, batch_size=batch_size, steps=steps, lr=lr, eval_every=eval_every,
        checkpoint_every=checkpoint_every, seed=seed)
    result = train(config, out_dir, device=device)
    last = result.log[-1]
    click.echo(f"step {last['step']}: loss {last['loss']:.3f}, in-context-learning score {last['icl_score']:+.3f}")
    for layer, (induction, previous) in enumerate(zip(last["induction"], last["previous_token"])):
        click.echo(f"  layer {layer}: best induction {max(induction):.3f}, best previous-token {max(previous):.3f}")
    click.echo(f"checkpoints in {out_dir}; `headscope classify {out_dir}/step-{last['step']:06d}` names the heads")


def _output_folder(out: str):
    from pathlib import Path

    from headscope.errors import InputError

    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {folder}: {err.strerror}") from err
    return folder


def main() -> None:
    cli(prog_name="headscope")


if __name__ == "__main__":
    main()
