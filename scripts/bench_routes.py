"""Information-flow routes against a plain forward pass: time on one prompt, and peak memory on a long one.

Targets (issue 15): routes for one 256-token SmolLM2 prompt within 3x a plain forward on 2 CPU cores;
a 2048-token prompt within 6 GB peak resident memory (the whole process, model included). Each timing is
the best of `--repeats`, forward and routes taken in turn so a busy machine slows both alike. The memory
run happens in a fresh child process, so its peak is its own.

  python scripts/bench_routes.py --json experiments/flow/bench_routes_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import report  # noqa: E402

SENTENCES = Path(__file__).parent.parent / "experiments" / "head_roles" / "sentences.txt"


def prompt(model, n_tokens: int) -> torch.Tensor:
    """(1, n_tokens) ids of the sentences file, repeated as often as needed."""
    text = SENTENCES.read_text()
    tokens = model.to_tokens(text)
    while tokens.shape[1] < n_tokens:
        tokens = torch.cat([tokens, tokens], dim=1)
    return tokens[:, :n_tokens]


def timing(n_tokens: int, repeats: int) -> dict:
    import headscope
    from headscope.analysis.routes import information_routes

    model = headscope.load_model("smollm2-135m")
    tokens = prompt(model, n_tokens)
    forward, routes, graph = [], [], None
    with torch.no_grad():
        model(tokens)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model(tokens)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        graph = information_routes(model, tokens)
        routes.append(time.perf_counter() - start)
    return {"tokens": n_tokens, "forward_s": min(forward), "routes_s": min(routes),
            "routes_over_forward": min(routes) / min(forward), "route_nodes": graph.number_of_nodes(),
            "route_edges": graph.number_of_edges()}


def memory(n_tokens: int) -> dict:
    """Run in a child: routes for one long prompt, then the process's peak resident memory."""
    import headscope
    from headscope.analysis.routes import information_routes

    model = headscope.load_model("smollm2-135m")
    tokens = prompt(model, n_tokens)
    start = time.perf_counter()
    graph = information_routes(model, tokens)
    return {"tokens": n_tokens, "routes_s": time.perf_counter() - start,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "route_nodes": graph.number_of_nodes(), "route_edges": graph.number_of_edges()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--long-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory(args.long_tokens)))
        return
    figures = {f"short_{k}": v for k, v in timing(args.tokens, args.repeats).items()}
    child = subprocess.run([sys.executable, __file__, "--memory-child", "--long-tokens", str(args.long_tokens),
                            "--threads", str(args.threads)], capture_output=True, text=True, check=True)
    figures |= {f"long_{k}": v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    figures["threads"] = args.threads
    figures["command"] = "python scripts/bench_routes.py " + " ".join(sys.argv[1:])
    report(figures, args.json)


if __name__ == "__main__":
    main()
