"""`headscope train`: an attention-only toy model, trained with step checkpoints that a rerun resumes."""

from __future__ import annotations

import dataclasses

import click

from headscope.cli.options import device_option
from headscope.training import TrainConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # the CLI's defaults are the API's


def _option(name: str, help: str | None = None, **kwargs):
    """--name-with-dashes for the TrainConfig field `name`, defaulting to the field's default."""
    default = _DEFAULTS[name]
    return click.option(f"--{name.replace('_', '-')}", name, default=default, show_default=default is not None,
                        help=help, **kwargs)


@click.command("train")
@click.argument("out_dir", type=click.Path(file_okay=False))
@_option("data", type=click.Choice(["repeated-random", "stdlib"]),
         help="Repeated random segments, or the Python standard library's source as bytes.")
@click.option("--corpus", type=click.Path(), help="With --data stdlib: another folder of .py/.txt files.")
@_option("n_layers", type=click.IntRange(min=1))
@_option("n_heads", type=click.IntRange(min=1))
@_option("d_model", type=click.IntRange(min=1))
@_option("d_mlp", type=click.IntRange(min=0), help="MLP width; 0 = attention-only.")
@click.option("--no-layernorm", is_flag=True)
@_option("steps", type=int)
@_option("batch_size", type=int)
@_option("lr", type=float)
@_option("seq_len", type=int)
@_option("eval_every", type=int)
@_option("checkpoint_every", type=int)
@_option("seed", type=int)
@device_option
def train(out_dir: str, data: str, corpus: str | None, n_layers: int, n_heads: int, d_model: int, d_mlp: int,
          no_layernorm: bool, steps: int, batch_size: int, lr: float, seq_len: int, eval_every: int,
          checkpoint_every: int, seed: int, device: str) -> None:
    """Train an attention-only toy model into OUT_DIR (checkpoints step-N/, log.json); rerun to resume."""
    from headscope.training import train as run_training

    config = TrainConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp, layernorm=not no_layernorm, data=data,
        corpus_dir=corpus, seq_len=seq_len, batch_size=batch_size, steps=steps, lr=lr, eval_every=eval_every,
        checkpoint_every=checkpoint_every, seed=seed)
    result = run_training(config, out_dir, device=device)
    last = result.log[-1]
    click.echo(f"step {last['step']}: loss {last['loss']:.3f}, in-context-learning score {last['icl_score']:+.3f}")
    for layer, (induction, previous) in enumerate(zip(last["induction"], last["previous_token"])):
        click.echo(f"  layer {layer}: best induction {max(induction):.3f}, best previous-token {max(previous):.3f}")
    click.echo(f"checkpoints in {out_dir}; `headscope classify {out_dir}/step-{last['step']:06d}` names the heads")
