"""What every benchmark does with its figures: print them, and write them as JSON when asked."""

from __future__ import annotations

import json
import math


def report(figures: dict, json_path: str | None) -> None:
    """One `name value` line per figure, then the JSON file."""
    for key, value in figures.items():
        print(f"{key:<22}{value:.4g}" if isinstance(value, float) else f"{key:<22}{value}")
    save(figures, json_path)


def save(figures: dict, json_path: str | None) -> None:
    """Strict JSON: a figure that was not measured (NaN) is written as null."""
    if json_path:
        strict = {key: None if isinstance(value, float) and math.isnan(value) else value
                  for key, value in figures.items()}
        with open(json_path, "w") as f:
            json.dump(strict, f, indent=2, allow_nan=False)
