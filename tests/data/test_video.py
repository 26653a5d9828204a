from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

from vlaflow.data import video
from vlaflow.data.video import (
    VideoDecoder,
    VideoDecoderPool,
    VideoEncoder,
    default_video_codec,
    encode_video,
    has_encoder,
    probe_video,
)

FPS = 15


@pytest.fixture
def clip(tmp_path, counter):
    """40 frames at 15 fps (timestamps are not round numbers) showing counters 0..39."""
    counter_frames, _ = counter
    frames = counter_frames(np.arange(40), 32)
    path = tmp_path / "clip.mp4"
    encode_video(path, frames, FPS)
    return path, frames


@pytest.fixture
def seeks(monkeypatch):
    """Counts the decoder's seeks."""
    calls = []
    original = VideoDecoder._seek

    def spy(self, ts):
        calls.append(ts)
        original(self, ts)

    monkeypatch.setattr(VideoDecoder, "_seek", spy)
    return calls


def test_default_codec_is_h264_when_available():
    assert has_encoder("libx264") and default_video_codec() == "libx264"
    assert not has_encoder("no-such-codec")


def test_frames_come_back_close_and_in_order(clip, counter):
    path, frames = clip
    _, read_counter = counter
    order = [*range(40), *np.random.default_rng(0).permutation(40), 7, 7, 39, 0]
    with VideoDecoder(path) as decoder:
        decoded = decoder.frames_at([k / FPS for k in order])
    assert decoded.shape == (len(order), 32, 32, 3) and decoded.dtype == np.uint8
    assert [read_counter(f) for f in decoded] == order
    assert np.abs(decoded.astype(int) - frames[order]).mean() < 2.0


def test_sequential_access_does_not_seek_again(clip, seeks):
    path, _ = clip
    with VideoDecoder(path) as decoder:
        for k in range(40):
            decoder.frames_at([k / FPS])
        assert len(seeks) == 1
        decoder.frames_at([39 / FPS])  # same frame again: served from the last decoded frame
        assert len(seeks) == 1
        decoder.frames_at([10 / FPS])  # backwards
        decoder.frames_at([30 / FPS])  # far ahead of a g=2 stream: seek rather than decode 20 frames
        assert len(seeks) == 3


def test_long_gop_strides_decode_forward(tmp_path, counter, seeks):
    counter_frames, read_counter = counter
    path = tmp_path / "long_gop.mp4"
    with VideoEncoder(path, fps=FPS, width=32, height=32, gop=30) as encoder:
        encoder.write(counter_frames(np.arange(60), 32))
    with VideoDecoder(path) as decoder:
        got = [read_counter(decoder.frames_at([k / FPS])[0]) for k in range(0, 60, 5)]
    assert got == list(range(0, 60, 5)) and len(seeks) == 1


def test_timestamps_without_a_frame_are_errors(clip):
    path, _ = clip
    with VideoDecoder(path) as decoder:
        with pytest.raises(ValueError, match="outside the tolerance"):
            decoder.frames_at([3.5 / FPS])
        with pytest.raises(ValueError, match=r"no frame at 5\.0000 s"):
            decoder.frames_at([5.0])
        assert decoder.frames_at([3 / FPS], tolerance_s=1e-4).shape == (1, 32, 32, 3)


@pytest.mark.skipif(not has_encoder("libsvtav1"), reason="this PyAV build has no SVT-AV1 encoder")
def test_av1_round_trip(tmp_path, counter):
    counter_frames, read_counter = counter
    path = tmp_path / "av1.mp4"
    encode_video(path, counter_frames(np.arange(12), 64), 10, codec="libsvtav1")
    assert probe_video(path)["codec"] == "av1"
    with VideoDecoder(path) as decoder:
        decoded = decoder.frames_at(np.arange(12)[::-1] / 10)
    assert [read_counter(f) for f in decoded] == list(range(12))[::-1]


def test_probe_reports_the_stream(clip):
    path, _ = clip
    info = probe_video(path)
    assert (info["frames"], info["width"], info["height"]) == (40, 32, 32)
    assert (info["codec"], info["pix_fmt"], info["fps"]) == ("h264", "yuv420p", 15.0)
    assert not info["has_audio"]


def test_encoder_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even width and height"):
        VideoEncoder(tmp_path / "odd.mp4", fps=10, width=33, height=32)
    with VideoEncoder(tmp_path / "a.mp4", fps=10, width=32, height=32) as encoder:
        with pytest.raises(ValueError, match=r"expected uint8 frames \[T, 32, 32, 3\]"):
            encoder.write(np.zeros((2, 32, 32, 3), np.float32))
        with pytest.raises(ValueError, match=r"got uint8 \(2, 16, 32, 3\)"):
            encoder.write(np.zeros((2, 16, 32, 3), np.uint8))


def _decode_in_child(decoder: VideoDecoder) -> np.ndarray:
    return decoder.frames_at([5 / FPS, 6 / FPS])


def test_decoder_opened_before_a_fork_works_in_the_child_and_the_parent(clip):
    path, _ = clip
    decoder = VideoDecoder(path)
    before = decoder.frames_at([5 / FPS, 6 / FPS])
    assert decoder in video._OPEN_DECODERS
    with multiprocessing.get_context("fork").Pool(1) as pool:
        in_child = pool.apply(_decode_in_child, (decoder,))
    np.testing.assert_array_equal(in_child, before)
    np.testing.assert_array_equal(decoder.frames_at([5 / FPS, 6 / FPS]), before)
    decoder.close()


def test_pickled_decoder_reopens_its_file(clip):
    path, _ = clip
    decoder = VideoDecoder(path)
    first = decoder.frames_at([1 / FPS])
    clone = pickle.loads(pickle.dumps(decoder))
    np.testing.assert_array_equal(clone.frames_at([1 / FPS]), first)
    decoder.close()
    clone.close()


def test_pool_closes_the_least_recently_used_decoder(tmp_path, counter):
    counter_frames, _ = counter
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.mp4")
        encode_video(paths[-1], counter_frames([i, i], 32), FPS)
    pool = VideoDecoderPool(max_open=2)
    first = pool.get(paths[0])
    first.frames_at([0.0])
    pool.get(paths[1]).frames_at([0.0])
    pool.get(paths[2]).frames_at([0.0])
    assert first not in video._OPEN_DECODERS
    assert pool.get(paths[2]) is pool.get(paths[2])
    pool.close()
    assert not [d for d in video._OPEN_DECODERS if d.path in paths]
