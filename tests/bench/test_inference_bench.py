from vlaflow.bench.inference import main, run


def test_inference_benchmark_reports_every_stage(capsys, tmp_path):
    result = run("pi0_tiny", cameras=2, steps=2, iterations=2, warmup=1)
    assert result.prefix_tokens == 2 * 64 + 64 and result.suffix_tokens == 51
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
