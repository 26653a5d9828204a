from vlaflow.bench.inference import main, run
from vlaflow.models.presets import PRESETS


def test_inference_benchmark_reports_every_stage(capsys, tmp_path):
    result = run("pi0_tiny", cameras=2, steps=2, iterations=2, warmup=1)
    config = PRESETS["pi0_tiny"]()
    image_tokens = config.vision.num_patches
    assert result.prefix_tokens == 2 * image_tokens + config.max_token_len
    assert result.suffix_tokens == 1 + config.action_horizon
    for value in (result.vision_ms, result.prefix_ms, result.denoise_ms):
        assert value > 0
    assert (
        abs(result.total_ms - (result.vision_ms + result.prefix_ms + result.denoise_ms))
        < 0.5 * result.total_ms
    )
    assert (
        main(
            [
                "--preset",
                "pi05_tiny",
                "--iterations",
                "1",
                "--warmup",
                "0",
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    assert "median latency (ms): vision" in capsys.readouterr().out
    assert (tmp_path / "b.json").exists()


def test_training_benchmark_counts_flops(capsys):
    from vlaflow.bench.train import main as train_main
    from vlaflow.bench.train import run as train_run
    from vlaflow.models import preset
    from vlaflow.models.flops import training_step_flops

    result = train_run("pi0_tiny", batch_size=2, cameras=1, iterations=1, warmup=1)
    expected = training_step_flops(preset("pi0_tiny", image_keys=("base_0_rgb",)), batch_size=2).total
    assert result.model_tflop_per_step == expected / 1e12
    assert result.samples_per_s > 0 and result.mfu is None  # no known CPU peak
    assert (
        train_main(["--preset", "pi05_tiny", "--batch-size", "2", "--iterations", "1", "--warmup", "0"]) == 0
    )
    assert "MFU" in capsys.readouterr().out
