"""The half-precision parity table of docs/half_precision.md: for every tiny architecture of the tests, the
largest absolute error of each quantity in bfloat16 / float16 against float32, beside its tolerance.

The measurement is the test's own (`tests/test_half_precision.py`: `measure`, `TOLERANCES`), so the table
and the test cannot drift apart. Prints a Markdown table; `--json` also writes the figures.

  PYTHONPATH=. python scripts/half_precision_table.py                     # the CPU table (about a minute)
  PYTHONPATH=. python scripts/half_precision_table.py --device cuda --dtypes float32,bfloat16,float16
"""

from __future__ import annotations

import argparse

import torch

from bench_report import save  # scripts/, beside this file
from tests.test_half_precision import ARCHITECTURES, TOLERANCES, measure

COLUMNS = ("output", "pattern", "recorded", "statistic", "mean_distance", "sweep")


def column_of(key: str) -> str:
    """The table column of one measured quantity ("statistic mean_distance" has a column of its own)."""
    if key.endswith("mean_distance"):
        return "mean_distance"
    return key.split()[0]


def tolerance_row(dtype: torch.dtype) -> list[str]:
    bounds = TOLERANCES[dtype] | {"recorded": TOLERANCES[dtype]["pattern"]}
    return [f"**tolerance {str(dtype)[6:]}**", "", ""] + [f"**{bounds[c]:.2g}**" for c in COLUMNS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    print(f"device {args.device}, torch {torch.__version__}; largest error against float32 on the CPU (output, sweep: relative to the largest float32 value)\n")
    print("| architecture | dtype | padded | " + " | ".join(COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    figures = []
    for dtype in dtypes:
        for name in ARCHITECTURES:
            for padded in (False, True):
                errors = measure(name, dtype, padded, args.device)
                worst = {c: max((e for k, e in errors.items() if column_of(k) == c), default=None) for c in COLUMNS}
                cells = ["n/a" if worst[c] is None else f"{worst[c]:.1e}" for c in COLUMNS]
                print(f"| {name} | {str(dtype)[6:]} | {'yes' if padded else 'no'} | " + " | ".join(cells) + " |",
                      flush=True)
                figures.append({"architecture": name, "dtype": str(dtype), "padded": padded, "max_error": worst})
        print("| " + " | ".join(tolerance_row(dtype)) + " |")
    save({"device": args.device, "torch": torch.__version__, "rows": figures,
          "tolerances": {str(d): TOLERANCES[d] for d in dtypes}}, args.json)


if __name__ == "__main__":
    main()
