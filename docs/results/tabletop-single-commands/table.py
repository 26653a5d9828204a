"""The table of docs/results/tabletop-single-commands.md from `vlaflow eval tabletop` output folders.

    python docs/results/tabletop-single-commands/table.py RUN=EVAL_DIR ... [--json runs.json]

Per run: successes of all single commands and by command kind (Wilson 95% intervals), the share of
pick-up episodes whose first moved object is not the target (wrong target), and the share whose
first chunk heads for the target (first heading, cosine >= 0.7).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("pick up", "open the drawer", "close the drawer", "open the box", "close the box")


def summary(results: dict) -> dict:
    overall = results["overall"]
    return {
        "success": overall["success"],
        "episodes": overall["episodes"],
        "kinds": {k: results["commands"][k]["success"] for k in KINDS if k in results["commands"]},
        "kind_episodes": {k: results["commands"][k]["episodes"] for k in KINDS if k in results["commands"]},
        "wrong_target": overall.get("wrong_target"),
        "first_heading": overall.get("first_heading"),
        "settings": {k: results["settings"][k] for k in ("policy", "split", "skills", "seed")},
    }


def row(name: str, s: dict) -> str:
    success = s["success"]
    low, high = (round(100 * x) for x in success["ci95"])
    kinds = " | ".join(
        f"{s['kinds'][k]['successes']}/{s['kind_episodes'][k]}" if k in s["kinds"] else "-" for k in KINDS
    )
    wrong = s["wrong_target"]
    heading = s["first_heading"]
    towards = round(heading["towards"] * heading["episodes"])
    return (
        f"| {name} | **{success['successes']}/{s['episodes']}** [{low}, {high}] | {kinds} | "
        f"{wrong['wrong']}/{wrong['episodes']} | {towards}/{heading['episodes']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=EVAL_DIR")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        name, folder = item.split("=", 1)
        runs[name] = summary(json.loads((Path(folder) / "results.json").read_text()))
    print(
        "| run | success [95%] | " + " | ".join(KINDS) + " | wrong target (picks) | first heading (picks) |"
    )
    print("|" + "---|" * (len(KINDS) + 4))
    for name, s in runs.items():
        print(row(name, s))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
