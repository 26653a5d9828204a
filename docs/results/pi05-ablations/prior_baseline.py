"""What a model that never looks at the image scores on the held-out web questions of an ablation study.

For each held-out question, the answer given most often to the *same prompt* in the training dataset's
web samples (``web/samples.jsonl``), else the most frequent answer of the question's kind; scored with
the same rule as the models (`vlaflow.sim.tabletop.web_eval.score_answer`). A run that scores near this
baseline has learned the answer priors of the questions, not to read the scene.

    python docs/results/pi05-ablations/prior_baseline.py DATASET STUDY/web/full/seed0
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from vlaflow.sim.tabletop.evaluate import wilson_interval
from vlaflow.sim.tabletop.web_eval import score_answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="the `vlaflow generate tabletop` directory trained on")
    parser.add_argument("answers", type=Path, help="a run's web/<run>/seed<k> folder (its train/ and ood/)")
    args = parser.parse_args()
    training = [
        json.loads(line) for line in (args.dataset / "web" / "samples.jsonl").read_text().splitlines()
    ]
    by_prompt: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for sample in training:
        by_prompt[sample["prompt"]][sample["target"]] += 1
        by_kind[sample["kind"]][sample["target"]] += 1
    for split in ("train", "ood"):
        held_out = json.loads((args.answers / split / "web_results.json").read_text())["samples"]
        scores: dict[str, list[bool]] = defaultdict(list)
        for sample in held_out:
            prior = (by_prompt.get(sample["prompt"]) or by_kind[sample["kind"]]).most_common(1)[0][0]
            scores[sample["kind"]].append(score_answer(sample["kind"], prior, sample["target"])["correct"])
        scores["all"] = [x for kind in list(scores) for x in scores[kind]]
        cells = []
        for kind, right in scores.items():
            low, high = wilson_interval(sum(right), len(right))
            cells.append(
                f"{kind} {100 * sum(right) / len(right):.1f} [{100 * low:.0f}, {100 * high:.0f}] "
                f"({sum(right)}/{len(right)})"
            )
        print(f"{split}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
