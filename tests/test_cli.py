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
