"""Induction-head formation in 1-, 2- and 3-layer attention-only models (Olsson et al. 2022, sec. 3).

The same data (repeated random segments of varying period, seed 0) and settings for each depth; every 25
steps: the in-context-learning score (loss at the last token minus at the 3rd; negative = context helps)
and every head's induction and previous-token score. The phase change is the step where the best
induction score first passes 0.5; the ICL score is read at the same step. Writes results.json and the
figures formation.html (interactive) and formation.svg (static).

  python experiments/induction_formation/run.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from headscope.training import TrainConfig, train
from headscope.viz import write_figure

HERE = Path(__file__).parent
STEPS, EVERY = 1500, 25


def first_step_above(log: list[dict], key: str, threshold: float) -> int | None:
    return next((e["step"] for e in log if max(max(row) for row in e[key]) > threshold), None)


def main() -> None:
    runs = {}
    began = time.perf_counter()
    for n_layers in (1, 2, 3):
        start = time.perf_counter()
        result = train(TrainConfig(n_layers=n_layers, steps=STEPS, eval_every=EVERY, checkpoint_every=STEPS, seed=0),
                       progress=False)
        log = result.log
        change = first_step_above(log, "induction", 0.5)
        runs[n_layers] = {
            "seconds": time.perf_counter() - start,
            "phase_change_step": change,
            "icl_before": next((e["icl_score"] for e in log if change and e["step"] == change - 2 * EVERY), None),
            "icl_at_change": next((e["icl_score"] for e in log if e["step"] == change), None),
            "final_icl": log[-1]["icl_score"], "final_loss": log[-1]["loss"],
            "final_best_induction": max(max(row) for row in log[-1]["induction"]),
            "log": [{"step": e["step"], "loss": e["loss"], "icl_score": e["icl_score"],
                     "best_induction": max(max(row) for row in e["induction"]),
                     "best_previous_token": max(max(row) for row in e["previous_token"])} for e in log],
        }
        print(f"{n_layers} layer(s): phase change at step {change}; ICL {runs[n_layers]['icl_before']} -> "
              f"{runs[n_layers]['icl_at_change']}; final ICL {runs[n_layers]['final_icl']:.2f}, best induction "
              f"{runs[n_layers]['final_best_induction']:.2f} ({runs[n_layers]['seconds']:.0f} s)")
    total = time.perf_counter() - began
    (HERE / "results.json").write_text(json.dumps({
        "command": "python experiments/induction_formation/run.py", "steps": STEPS, "eval_every": EVERY,
        "config": TrainConfig().__dict__, "seconds": total, "runs": runs}, indent=1))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("in-context learning score (loss at last token - at 3rd)",
                                        "best induction score of any head"))
    colours = {1: "#888888", 2: "#1f77b4", 3: "#d62728"}
    for n_layers, run in runs.items():
        steps = [e["step"] for e in run["log"]]
        style = dict(color=colours[n_layers])
        fig.add_trace(go.Scatter(x=steps, y=[e["icl_score"] for e in run["log"]], name=f"{n_layers} layer(s)",
                                 line=style, legendgroup=str(n_layers)), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[e["best_induction"] for e in run["log"]], showlegend=False,
                                 line=style, legendgroup=str(n_layers)), row=2, col=1)
        if run["phase_change_step"]:
            fig.add_vline(x=run["phase_change_step"], line=dict(color=colours[n_layers], dash="dot"))
    fig.update_layout(title="Induction heads form at the same step as in-context learning (attention-only models)",
                      template="plotly_white", width=900, height=700, font=dict(size=14))
    fig.update_xaxes(title_text="training step", row=2, col=1)
    write_figure(fig, HERE / "formation.html")
    write_figure(fig, HERE / "formation.svg")
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
