"""The ablation harness at toy size: four training runs for six variants (implicit and oracle reuse the
full checkpoint), the dropped kinds really absent from the realised mixtures, every variant scored on
both splits, every run's answers to held-out web questions, a rerun that neither trains nor evaluates, a
report row per variant with intervals, and a loud failure when a run holds a kind its variant drops."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mujoco")

from vlaflow.cli import main
from vlaflow.sim.tabletop.ablations import (
    RUNS,
    VARIANTS,
    MixtureError,
    ablation_report,
    realised_kinds,
    run_ablations,
)
from vlaflow.sim.tabletop.generate import generate_tabletop

SMALL = [  # one camera, short prompts, data loaded in the training process: a fast test
    'model_overrides={"image_keys": ["base_0_rgb"], "max_token_len": 48}',
    'cameras={"base_0_rgb": "observation.images.scene"}',
    "num_workers=0",
]
TOY = {"seeds": (0,), "steps": 2, "batch_size": 4, "eval_episodes": 1, "families": ("instruction",)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablations") / "tabletop"
    generate_tabletop(root, families=("instruction",), episodes=2, resolution=56, workers=1, progress=False)
    return root


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_every_variant_is_trained_once_evaluated_on_both_splits_and_a_rerun_does_nothing(
    dataset, tmp_path, capsys
):
    out = tmp_path / "study"
    summary = run_ablations(
        out, dataset=dataset, workers=1, videos=0, web_images=1, extra_overrides=SMALL, progress=False, **TOY
    )
    # One training run per distinct recipe: implicit and oracle evaluate the full checkpoint.
    assert {p.name for p in (out / "runs").iterdir()} == set(RUNS) == {"full", "no_hl", "no_web", "no_verbal"}
    full = summary["runs"]["full"]["0"]["checkpoint"]
    for name in ("full", "implicit", "oracle"):
        settings = json.loads((out / "eval" / name / "seed0" / "ood" / "results.json").read_text())[
            "settings"
        ]
        assert settings["policy"] == full and settings["mode"] == VARIANTS[name].mode

    # The realised mixtures: everything in full, the dropped kind absent from each no_* run.
    kinds = {run: set(realised_kinds(out / "runs" / run / "seed0")) for run in RUNS}
    assert kinds["full"] == {"robot", "verbal", "high_level", "web"}
    assert kinds["no_hl"] == {"robot", "verbal", "web"}
    assert kinds["no_web"] == {"robot", "verbal", "high_level"}
    assert kinds["no_verbal"] == {"robot", "high_level", "web"}
    assert summary["runs"]["no_hl"]["0"]["subtask_targets"] is False
    assert summary["runs"]["full"]["0"]["subtask_targets"] is True

    assert list(summary["variants"]) == list(VARIANTS)
    for name, variant in summary["variants"].items():
        for split in ("train", "ood"):
            pooled = variant["splits"][split]["pooled"]["overall"]
            assert pooled["episodes"] == 1 and set(variant["splits"][split]["seeds"]) == {"0"}
            # Subtask accuracy where the mode reports subtasks (hierarchical, oracle), not in implicit.
            assert ("subtask_accuracy" in pooled) == (VARIANTS[name].mode != "implicit")
    assert (out / "ablations.png").stat().st_size > 0 and (out / "summary.json").is_file()

    # Web questions: once per training run, seed and split, by the run's own checkpoint.
    assert set(summary["web"]) == set(RUNS)
    for run, result in summary["web"].items():
        for split in ("train", "ood"):
            answers = json.loads((out / "web" / run / "seed0" / split / "web_results.json").read_text())
            assert answers["settings"]["checkpoint"] == summary["runs"][run]["0"]["checkpoint"]
            assert answers["settings"]["split"] == split and answers["samples"]
            pooled = result["splits"][split]["pooled"]["overall"]
            assert pooled["samples"] == len(answers["samples"]) and 0.0 <= pooled["rate"] <= 1.0

    report = ablation_report(summary)
    for name in VARIANTS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert row.count("[") >= 3  # progress, success, language following with intervals
    assert report.count("| full |") == 4 and "~80%" in report and "~55%" in report
    assert "## held-out web questions" in report
    web_section = report.split("## held-out web questions")[1]
    web_rows = [line for line in web_section.splitlines() if line.startswith("| no_web | no web samples |")]
    assert [row.split(" | ")[2] for row in web_rows] == ["train", "ood"]

    # A rerun (through the CLI) trains nothing and evaluates nothing.
    before = _mtimes(out / "runs") | _mtimes(out / "eval") | _mtimes(out / "web")
    args = ["ablate", "tabletop", "--dataset", str(dataset), "--output", str(out), "--seeds", "0", "--steps",
            "2", "--batch-size", "4", "--eval-episodes", "1", "--families", "instruction", "--workers", "1",
            "--videos", "0", "--web-images", "1", *SMALL]  # fmt: skip
    assert main(args) == 0
    assert _mtimes(out / "runs") | _mtimes(out / "eval") | _mtimes(out / "web") == before
    printed = capsys.readouterr().out
    assert all(f"| {name} |" in printed for name in VARIANTS) and "report" in printed

    # Other settings for an existing run are refused before anything trains.
    with pytest.raises(ValueError, match="trained with other settings"):
        run_ablations(
            out, dataset=dataset, workers=1, extra_overrides=SMALL, progress=False, **TOY | {"batch_size": 8}
        )
    assert _mtimes(out / "runs") | _mtimes(out / "eval") | _mtimes(out / "web") == before

    # A run whose mixture holds a kind its variant drops stops the study.
    metrics = out / "runs" / "no_web" / "seed0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[0]["mixture"]["tabletop/web"] = {"samples": 1, "weight": 0.1}
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(MixtureError, match=r"no_web.*'web'"):
        run_ablations(out, dataset=dataset, workers=1, videos=0, extra_overrides=SMALL, progress=False, **TOY)
    assert main(args) == 2 and "must not hold" in capsys.readouterr().err


def test_settings_the_harness_owns_and_unknown_variants_are_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="set by the harness"):
        run_ablations(tmp_path, dataset=dataset, extra_overrides=["steps=5"], progress=False)
    with pytest.raises(ValueError, match="variants must be"):
        run_ablations(tmp_path, dataset=dataset, variants=["no_fast"], progress=False)
    with pytest.raises(ValueError, match="web_images must be >= 0"):
        run_ablations(tmp_path, dataset=dataset, web_images=-1, progress=False)
    assert not any(tmp_path.iterdir())
