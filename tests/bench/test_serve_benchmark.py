from vlaflow.bench.serve import main, run, tiny_checkpoint


def test_serve_benchmark_batches_concurrent_clients_and_reports(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    result = run(
        checkpoint, clients=2, requests=3, num_steps=1, image_size=32, batch_window_ms=1000, warmup=1
    )
    assert result.replies == 6 and result.client_errors == 0 and result.server_errors == 0
    assert sum(size * n for size, n in result.batch_sizes.items()) == 6 and 2 in result.batch_sizes
    assert result.p99_ms >= result.p50_ms > 0 and result.throughput_rps > 0 and result.bare_p50_ms > 0
    args = ["--clients", "1", "--requests", "1", "--num-steps", "1", "--image-size", "32", "--warmup", "0"]
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    assert "server overhead" in capsys.readouterr().out and (tmp_path / "b.json").exists()
