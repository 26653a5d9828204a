from __future__ import annotations

import torch
from safetensors.torch import save_file

from vlaflow import VLA, preset
from vlaflow.cli import main
from vlaflow.interop.openpi import reference_key
from vlaflow.pretrained import load_pretrained


def test_infer_runs_the_tiny_default(capsys):
    assert main(["infer", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "actions: shape (1, 50, 32)" in out and "pi0.5" in out


def test_infer_full_size_without_tokenizer_is_a_clear_error(capsys):
    assert main(["infer", "--preset", "pi05"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_convert_then_infer(tmp_path, capsys):
    source = VLA(preset("pi0_dummy"))
    save_file(
        {reference_key(k): v for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    out = tmp_path / "converted"
    code = main(
        [
            "convert",
            str(tmp_path),
            "--pi0",
            "--paligemma-variant",
            "dummy",
            "--action-expert-variant",
            "dummy",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    loaded = load_pretrained(out)
    for (name, a), b in zip(source.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.metadata["converted_from"] == str(tmp_path)
    assert main(["convert", str(tmp_path), "--pi05", "--output", str(tmp_path / "bad")]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_infer_on_a_trained_checkpoint_prints_robot_dimensions(tmp_path, capsys):
    from vlaflow.bench.serve import TINY_ACTION_DIM, TINY_HORIZON, tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["infer", "--checkpoint", str(checkpoint), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"actions: shape (1, {TINY_HORIZON}, {TINY_ACTION_DIM}) (the robot's {TINY_ACTION_DIM}" in out


def test_every_option_of_every_command_has_help():
    import argparse

    from vlaflow.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [
        f"{p.prog} {a.dest}"
        for p in parsers(build_parser())
        for a in p._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and not a.help
    ]
    assert not missing
    train_help = next(p for p in parsers(build_parser()) if p.prog == "vlaflow train").format_help()
    assert "--print-config" in train_help
    eval_help = next(p for p in parsers(build_parser()) if p.prog == "vlaflow eval").format_help()
    assert "(default: 1000000)" in eval_help.replace("\n", " ")


def test_train_print_config_and_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--print-config", "batch_size=8"]) == 0
    assert "batch_size = 8  # global batch size" in capsys.readouterr().out
    for args, message in [
        (["batch_size=abc"], "batch_size: expected an integer, got 'abc'"),
        (["freeze=[vision"], "freeze=[vision: not valid JSON"),
        (["--dataset", str(tmp_path / "nope")], "no such directory"),
        (["--dataset", str(tmp_path)], "is not a LeRobot dataset: no meta/info.json"),
    ]:
        assert main(["train", "--output", str(tmp_path / "run"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
