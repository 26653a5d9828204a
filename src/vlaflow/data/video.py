"""MP4 encode / timestamp-exact decode with PyAV, fast enough for random-access training.

Codecs in the PyAV 18 wheel this project is built against (FFmpeg bundled in the wheel):

* encoders: ``libx264`` (H.264, our default), ``libx265`` (HEVC), ``libsvtav1`` (AV1, LeRobot's
  default), ``libvpx-vp9``, ``mpeg4``, ``png``; no ``libaom-av1``, no ``libopenh264``.
* decoders: ``h264``, ``hevc``, ``libdav1d`` (AV1; FFmpeg picks it for AV1 streams, so real LeRobot
  v3 datasets decode on CPU), ``av1`` (native, hardware-only), ``vp9``, ``mpeg4``, ``png``.

Encoding follows LeRobot: ``yuv420p``, a keyframe every 2 frames (``g=2``) so that any frame is at
most one frame away from a keyframe, CRF rate control. Decoding keeps one open container per file
per process (closed before a fork and reopened lazily, so DataLoader workers never touch FFmpeg
state of their parent), seeks to the keyframe before a wanted timestamp and decodes forward; a
request a little ahead of the last decoded frame keeps decoding instead of seeking again.
"""

from __future__ import annotations

import gc
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# SVT-AV1 prints its whole configuration to stderr on every encoder start unless told otherwise.
os.environ.setdefault("SVT_LOG", "1")

PIX_FMT = "yuv420p"
DEFAULT_GOP = 2
# Constant-quality setting per encoder: LeRobot's crf=30 for SVT-AV1, x264/x265's usual defaults.
_DEFAULT_CRF = {"libx264": 23, "libx265": 28, "libsvtav1": 30, "libvpx-vp9": 31}
_ENCODER_PREFERENCE = ("libx264", "libsvtav1", "libx265", "mpeg4")


def has_encoder(name: str) -> bool:
    """Whether this PyAV build can encode with `name`."""
    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av's UnknownCodecError
        return False
    return True


def default_video_codec() -> str:
    """``libx264`` if this PyAV build has it, else the first available of SVT-AV1, x265, mpeg4."""
    for name in _ENCODER_PREFERENCE:
        if has_encoder(name):
            return name
    raise RuntimeError(f"PyAV has none of the video encoders {_ENCODER_PREFERENCE}")


_OPEN_DECODERS: weakref.WeakSet[VideoDecoder] = weakref.WeakSet()
# PyAV containers are reference cycles: a closed one keeps its codec contexts (and their FFmpeg
# threads) until the cyclic garbage collector runs, possibly in a forked child.
_closed_containers_pending_gc = False


def _closed_a_container() -> None:
    global _closed_containers_pending_gc
    _closed_containers_pending_gc = True


def _prepare_fork() -> None:
    """FFmpeg state must not cross a fork: a child that frees a codec context it inherited joins
    threads that only exist in the parent and deadlocks. Close our decoders and collect the closed
    containers here, in the parent."""
    global _closed_containers_pending_gc
    for decoder in list(_OPEN_DECODERS):
        decoder.close()
    if _closed_containers_pending_gc:
        gc.collect()
        _closed_containers_pending_gc = False


os.register_at_fork(before=_prepare_fork)


class VideoEncoder:
    """Appends uint8 RGB frames [T, H, W, 3] to one mp4 stream; frame n is stamped n / fps.

    Several episodes can be appended one after the other (LeRobot v3 concatenates the episodes of a
    camera in one file); `frames_written` and `bytes_written` let the caller place them and decide
    when to start a new file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: int,
        width: int,
        height: int,
        codec: str | None = None,
        gop: int = DEFAULT_GOP,
        crf: int | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"{PIX_FMT} video needs even width and height, got {width}x{height} for {path}")
        self.path = Path(path)
        self.codec = codec or default_video_codec()
        self.fps = fps
        self.width, self.height = width, height
        options = {"g": str(gop)}
        crf = _DEFAULT_CRF.get(self.codec) if crf is None else crf
        if crf is not None:
            options["crf"] = str(crf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        try:
            self._stream = self._container.add_stream(self.codec, rate=fps, options=options)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT
        except Exception:
            self._container.close()
            raise
        self._time_base = Fraction(1, fps)
        self.frames_written = 0
        self.bytes_written = 0

    def write(self, frames: np.ndarray) -> None:
        """Encode frames uint8 [T, H, W, 3] (RGB) after those already written."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"{self.path}: expected uint8 frames [T, {self.height}, {self.width}, 3], "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = self._time_base
            self._mux(self._stream.encode(frame))
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and write the mp4 trailer (index); the file is unreadable before this."""
        if self._container is None:
            return
        self._mux(self._stream.encode(None))
        self._container.close()
        self._container = None
        _closed_a_container()

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self.bytes_written += packet.size
            self._container.mux(packet)

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_video(
    path: str | Path, frames: np.ndarray, fps: int, *, codec: str | None = None, crf: int | None = None
) -> None:
    """Write frames uint8 [T, H, W, 3] to a new mp4 at `path` (see `VideoEncoder`)."""
    _, height, width, _ = frames.shape
    with VideoEncoder(path, fps=fps, width=width, height=height, codec=codec, crf=crf) as encoder:
        encoder.write(frames)


class VideoDecoder:
    """Frames of one video file by timestamp, keeping the container open between calls.

    The container opens on first use. Open containers are closed before the process forks (e.g. a
    DataLoader starting its workers) and pickling drops them, so every process opens its own.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self._container = None
        self._stream = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._last_time: float | None = None  # time of the last decoded frame
        self._last_frame: av.VideoFrame | None = None
        self._last_array: np.ndarray | None = None
        self._last_key_time: float | None = None
        # Largest keyframe spacing seen: decoding forward less than that is never slower than a seek.
        self._gop_s: float | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._reset()

    def _open(self) -> None:
        if self._container is not None:
            return
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        self._container = av.open(str(self.path))
        if not self._container.streams.video:
            self.close()
            raise ValueError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        # One thread: DataLoader workers supply the parallelism, and robot-camera-sized frames decode
        # no faster with slice threads (whose start-up and hand-offs cost more than they save).
        self._stream.codec_context.thread_count = 1
        _OPEN_DECODERS.add(self)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            _closed_a_container()
        _OPEN_DECODERS.discard(self)
        self._reset()

    def frames_at(self, timestamps: Sequence[float], tolerance_s: float = 1e-4) -> np.ndarray:
        """uint8 RGB frames [N, H, W, 3] whose presentation times are within `tolerance_s` of
        `timestamps` (seconds from the start of the file), in the order asked."""
        self._open()
        order = np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")
        out: list[np.ndarray | None] = [None] * len(order)
        for k in order:
            out[k] = self._frame_at(float(timestamps[k]), tolerance_s)
        return np.stack(out) if out else np.zeros((0, self._stream.height, self._stream.width, 3), np.uint8)

    def _frame_at(self, ts: float, tolerance_s: float) -> np.ndarray:
        last = self._last_time
        if last is not None and abs(last - ts) <= tolerance_s:
            return self._last_rgb()
        ahead_limit = self._gop_s if self._gop_s is not None else 0.5
        if last is None or ts < last or ts - last > ahead_limit:
            self._seek(ts)
        for frame in self._frames:
            if frame.time is None:
                raise ValueError(f"{self.path}: decoded a frame without a timestamp")
            self._note_frame(frame)
            if frame.time >= ts - tolerance_s:
                break
        else:
            raise ValueError(
                f"{self.path}: no frame at {ts:.4f} s, the video ends at {self._last_time} s "
                f"(asked past the end of the file?)"
            )
        if abs(self._last_time - ts) > tolerance_s:
            raise ValueError(
                f"{self.path}: the frame nearest {ts:.4f} s is at {self._last_time:.4f} s, "
                f"outside the tolerance of {tolerance_s} s (timestamps out of sync with the video)"
            )
        return self._last_rgb()

    def _seek(self, ts: float) -> None:
        offset = max(0, round(ts / self._stream.time_base))
        self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last_key_time = None  # keyframe spacing is only measured within one decoding run

    def _note_frame(self, frame: av.VideoFrame) -> None:
        self._last_time = frame.time
        self._last_frame = frame
        self._last_array = None
        if frame.key_frame:
            if self._last_key_time is not None:
                spacing = frame.time - self._last_key_time
                self._gop_s = spacing if self._gop_s is None else max(self._gop_s, spacing)
            self._last_key_time = frame.time

    def _last_rgb(self) -> np.ndarray:
        if self._last_array is None:
            # A copy: PyAV's array is a view that keeps the FFmpeg frame alive, which then could be
            # freed in a forked child (deadlock) and pins decoder buffers.
            self._last_array = self._last_frame.to_ndarray(format="rgb24", threads=1).copy()
        return self._last_array

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoDecoderPool:
    """Open decoders by file, least recently used closed first so that datasets with one file per
    episode (LeRobot v2.1) do not run out of file descriptors; safe to copy into worker processes."""

    def __init__(self, max_open: int = 32) -> None:
        self.max_open = max_open
        self._decoders: OrderedDict[Path, VideoDecoder] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])

    def get(self, path: str | Path) -> VideoDecoder:
        path = Path(path)
        decoder = self._decoders.pop(path, None) or VideoDecoder(path)
        self._decoders[path] = decoder
        while len(self._decoders) > self.max_open:
            self._decoders.popitem(last=False)[1].close()
        return decoder

    def close(self) -> None:
        for decoder in self._decoders.values():
            decoder.close()
        self._decoders.clear()


def probe_video(path: str | Path) -> dict:
    """Frame count, size, codec and pixel format of the first video stream, read from the container
    header and index (no decoding)."""
    container = av.open(str(path))
    try:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        frames = stream.frames
        if not frames and stream.duration is not None and stream.average_rate:
            frames = math.floor(float(stream.duration * stream.time_base * stream.average_rate) + 0.5)
        return {
            "frames": frames,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": stream.codec_context.codec.canonical_name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "fps": float(stream.average_rate) if stream.average_rate else None,
            "has_audio": bool(container.streams.audio),
        }
    finally:
        container.close()
        _closed_a_container()
