import json

import pytest

from vlaflow.bench.inference import main, run, run_decode
from vlaflow.models.presets import PRESETS


def test_inference_benchmark_compares_variants_stage_by_stage(capsys, tmp_path):
    result = run(
        "pi0_tiny", compare=("eager", "engine"), dtype="float32,bfloat16", cameras=2, steps=2, iterations=2
    )
    config = PRESETS["pi0_tiny"]()
    image_tokens = config.vision.num_patches
    assert result.prefix_tokens == 2 * image_tokens + config.max_token_len
    assert result.suffix_tokens == 1 + config.action_horizon
    labels = ["eager/float32", "engine/float32", "eager/bfloat16", "engine/bfloat16"]
    assert [v.variant for v in result.variants] == labels
    for v in result.variants:
        for value in (v.vision_ms, v.prefix_ms, v.denoise_ms):
            assert value > 0
        assert abs(v.total_ms - (v.vision_ms + v.prefix_ms + v.denoise_ms)) < 0.5 * v.total_ms
        # the same actions in float32; within bf16's error of them in bf16 (same weights)
        assert v.max_rel_diff < (1e-5 if v.variant.endswith("float32") else 2e-2)
    assert result.variants[2].max_rel_diff > 0
    assert result.variants[0].speedup == 1.0 and result.variants[1].speedup > 0
    assert result.floor.tflop > 0 and result.floor.floor_ms is None  # no known CPU peak
    args = ["--preset", "pi05_tiny", "--iterations", "1", "--warmup", "0", "--batch-size", "1,2"]
    assert main([*args, "--cameras", "1", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("median latency (ms): variant | vision") == 2 and "  engine           | vision" in out
    assert [r["batch_size"] for r in json.loads((tmp_path / "b.json").read_text())] == [1, 2]


def test_fast_presets_time_decoding(capsys):
    args = ["--preset", "pi0fast_tiny", "--fast-tokens", "4", "--iterations", "2", "--warmup", "0"]
    assert main([*args, "--cameras", "1"]) == 0
    out = capsys.readouterr().out
    assert "chunk of 4 tokens, median ms" in out and "tokens/s | x1.00 | yes" in out
    with pytest.raises(ValueError, match="graph variant needs a CUDA device"):
        run_decode("pi0fast_tiny", compare=("eager", "graph"))
    with pytest.raises(ValueError, match="unknown decoding variant 'engine'"):
        run_decode("pi0fast_tiny", compare=("eager", "engine"), cameras=1)


def test_gpu_suite_dry_run_writes_json_and_markdown(tmp_path):
    from vlaflow.bench.gpu_suite import main as suite_main

    assert suite_main([str(tmp_path), "--dry-run"]) == 0
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    names = [p["name"] for p in report["parts"]]
    assert names[:4] == [
        "inference pi05_tiny batch 1",
        "inference pi0_tiny batch 1",
        "decoding pi0fast_tiny batch 1",
        "training pi05_tiny checkpointing off",
    ]
    assert names[-1] == "decoding pi0fast_tiny batch 2"
    assert all("result" in p for p in report["parts"]), report["parts"]
    decoding = report["parts"][2]["result"]
    assert [v["variant"] for v in decoding["variants"]] == ["eager"]
    assert decoding["variants"][0]["tokens_per_s"] > 0 and decoding["variants"][0]["same_tokens"]
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| pi05_tiny | 1 | engine |" in table and "| pi05_tiny | 2 | True | False |" in table
    assert "| pi0fast_tiny | 1 | eager |" in table and "| pi0fast_tiny | 2 | eager |" in table


def test_training_benchmark_counts_flops(capsys):
    from vlaflow.bench.train import main as train_main
    from vlaflow.bench.train import run as train_run
    from vlaflow.models import preset
    from vlaflow.models.flops import training_step_flops

    result = train_run("pi0_tiny", batch_size=2, cameras=1, iterations=1, warmup=1)
    assert not result.compiled
    expected = training_step_flops(preset("pi0_tiny", image_keys=("base_0_rgb",)), batch_size=2).total
    assert result.model_tflop_per_step == expected / 1e12
    assert result.samples_per_s > 0 and result.mfu is None  # no known CPU peak
    assert (
        train_main(["--preset", "pi05_tiny", "--batch-size", "2", "--iterations", "1", "--warmup", "0"]) == 0
    )
    assert "MFU" in capsys.readouterr().out
