"""What every benchmark does with its figures: print them, and write them as JSON when asked."""

from __future__ import annotations

import json


def report(figures: dict, json_path: str | None) -> None:
    """One `name value` line per figure, then the JSON file."""
    for key, value in figures.items():
        print(f"{key:<22}{value:.4g}" if isinstance(value, float) else f"{key:<22}{value}")
    save(figures, json_path)


def save(figures: dict, json_path: str | None) -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=2)
