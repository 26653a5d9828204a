"""A WebSocket policy server that speaks openpi's wire protocol, so robot clients written for
openpi work unchanged: on connect one msgpack frame of metadata, then one msgpack-numpy reply
frame per request frame, with `actions` (H, action_dim) in robot units, `policy_timing:
{infer_ms}` (the `infer_batch` call) and `server_timing: {infer_ms, queue_ms, batch_size,
prev_total_ms}` (infer_ms: from the request's arrival to its actions; queue_ms: waiting for a
batch; prev_total_ms: the previous request's arrival to reply, from the second reply on), and `subtask`
(str) when a subtask conditioned the chunk (`--mode hierarchical` or `oracle`). openpi's
`{"__ctrl__": ...}` episode markers get `{"__ack__": ...}`. `GET /healthz` answers 200.

Besides its cameras, state and prompt a request may carry real-time chunking's hints
`prev_actions` (L, action_dim) and `inference_delay` (see `vlaflow.inference.schema`), used when
the server runs with RTC (`metadata["rtc"]`: its settings, or None) and checked either way; in
oracle mode (`metadata["mode"]`) it must carry `subtask`. Each connection is one session of the
policy: in hierarchical mode it keeps its own decoded subtask whatever batches its requests share,
until a `__ctrl__` marker or the end of the connection forgets it.

Unlike the reference it never closes a connection over a bad request: each one gets an error
frame naming the field (see `vlaflow.inference.schema`) and the connection stays open. Inference
runs on one worker thread, off the event loop, so many clients can be connected at once; requests
that arrive within `batch_window_ms` of each other and have the same cameras at the same sizes
share one `Policy.infer_batch` call. The wait ends early once every connected client is waiting,
so a lone client never waits. Optional token (`Authorization: Bearer T`, openpi's
`Authorization: Api-Key T`, or `?token=T`; otherwise 401; never empty), with failed attempts
throttled per client address (`AuthGuard`: 429 after `max_auth_failures`, one log line per burst).

What one client can cost the others is bounded: frames are decoded on their own thread, after their
msgpack headers were checked (`vlaflow.inference.protocol`: object count and nesting depth); frames
above `max_frame_bytes` get an error reply without being decoded, frames above `OVERSIZE_FACTOR`
times that are refused by the WebSocket layer (close code 1009) before they are read, and at most one
frame is read ahead of the one being answered, so a connection holds at most about three frames; a
client that does not read its replies for `send_timeout_s` is dropped, one that sends nothing for
`idle_timeout_s` is closed (1000), connections beyond `max_connections` get 503, openpi's control
markers are echoed only when short, and a closed connection that sent large frames gives its memory
back at once. No reply carries a non-finite action.

SIGTERM / SIGINT stop it cleanly: no new connections, new requests get an error reply, replies
already being computed are delivered (for up to `DRAIN_TIMEOUT_S`), then connections close with
1001; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import gc
import hmac
import http
import ipaddress
import itertools
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Request as HttpRequest
from websockets.asyncio.server import Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import vlaflow
from vlaflow.inference import SESSION_KEY
from vlaflow.inference.policy import Policy
from vlaflow.inference.protocol import DecodeError, pack, unpack
from vlaflow.inference.schema import DEFAULT_STATE_KEY, Request, RequestError, ServingSpec, control_hz

if TYPE_CHECKING:
    from vlaflow.interop.openpi_robots import Robot

logger = logging.getLogger(__name__)

TOKEN_ENV = "VLAFLOW_SERVER_TOKEN"
OVERSIZE_FACTOR = 2
HEALTH_PATH = "/healthz"
MAX_CONTROL_BYTES = 4096  # an openpi `__ctrl__` frame is echoed back: only a short one
LARGE_FRAME_BYTES = 2**20  # after a connection that sent frames this large closes, memory is returned
DRAIN_TIMEOUT_S = 2.0  # on stop, how long requests already being answered may take to be delivered


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see `PolicyServer.port`)
    token: str | None = None  # None: no token; never empty
    max_frame_bytes: int = 16 * 2**20
    batch_window_ms: float = 10.0
    max_batch: int = 8
    max_connections: int = 32
    idle_timeout_s: float | None = 600.0  # a connection that sends nothing this long is closed
    send_timeout_s: float = 30.0  # a client that does not read its reply this long is dropped
    max_auth_failures: int = 10  # per client address within `auth_window_s`; then refused that long
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.token is not None and not self.token.strip():
            raise ValueError(
                f"token: got an empty token, which would turn authentication off; set a non-empty "
                f"--token / ${TOKEN_ENV}, or leave both unset to serve without one"
            )
        if self.max_frame_bytes < 1 or self.max_batch < 1 or self.batch_window_ms < 0:
            raise ValueError(
                f"max_frame_bytes and max_batch must be >= 1 and batch_window_ms >= 0, got "
                f"{self.max_frame_bytes}, {self.max_batch}, {self.batch_window_ms}"
            )
        if self.max_connections < 1 or self.max_auth_failures < 1:
            raise ValueError(
                f"max_connections and max_auth_failures must be >= 1, got {self.max_connections}, "
                f"{self.max_auth_failures}"
            )
        if (self.idle_timeout_s is not None and self.idle_timeout_s <= 0) or self.send_timeout_s <= 0:
            raise ValueError(
                f"idle_timeout_s (None: never) and send_timeout_s must be > 0, got {self.idle_timeout_s}, "
                f"{self.send_timeout_s}"
            )


@dataclass
class ServerStats:
    """What the server has done so far (read by tests and the benchmark)."""

    replies: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # error replies by field, or "inference"
    batch_sizes: Counter[int] = field(default_factory=Counter)  # batches formed, by size
    open_connections: int = 0


class AuthGuard:
    """Failed token checks per client address. After `max_failures` within `window_s` the address is
    refused until `window_s` after its last failure, and only the first failure of a burst and the
    one that blocks are worth a log line: a client guessing tokens can neither hammer the check nor
    flood the log."""

    MAX_ADDRESSES = 10_000  # forgotten when older than the window, swept when this many are known

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str) -> list[float]:
        cutoff = self.clock() - self.window_s
        times = [t for t in self._failures.pop(address, ()) if t > cutoff]
        if times:
            self._failures[address] = times
        return times

    def blocked_for(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        times = self._recent(address)
        return max(0.0, times[-1] + self.window_s - self.clock()) if len(times) >= self.max_failures else 0.0

    def fail(self, address: str) -> int:
        """Records a failed attempt; returns how many `address` made within the window."""
        if len(self._failures) >= self.MAX_ADDRESSES:
            for known in list(self._failures):
                self._recent(known)
        times = [*self._recent(address), self.clock()][-self.max_failures :]
        self._failures[address] = times
        return len(times)


@dataclass(frozen=True)
class BatchResult:
    actions: np.ndarray
    infer_ms: float
    batch_size: int
    info: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"subtask": str}, added to the reply


InferBatch = Callable[[list[dict[str, Any]]], np.ndarray | tuple[np.ndarray, list[dict[str, Any]]]]
"""Observations -> (B, H, A) actions, or (actions, per-observation info) as `Policy.infer_batch(...,
return_info=True)` returns them."""


@dataclass
class _Waiting:
    request: Request
    arrived: float
    result: asyncio.Future[BatchResult]


class Batcher:
    """Collects requests into batches and runs them on one worker thread, one batch at a time."""

    def __init__(
        self,
        infer_batch: InferBatch,
        *,
        window_s: float,
        max_batch: int,
        clients: Callable[[], int],
        stats: ServerStats,
    ):
        self.infer_batch, self.window_s, self.max_batch = infer_batch, window_s, max_batch
        self.clients, self.stats = clients, stats
        self.waiting: list[_Waiting] = []
        self.arrival = asyncio.Event()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlaflow-infer")

    async def submit(self, request: Request) -> BatchResult:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, loop.time(), loop.create_future())
        self.waiting.append(waiting)
        self.arrival.set()
        return await waiting.result

    def _compatible(self, first: _Waiting) -> list[_Waiting]:
        same = [w for w in self.waiting if w.request.signature == first.request.signature]
        return same[: self.max_batch]

    async def _next_batch(self) -> list[_Waiting]:
        """Waits for a request, then for compatible ones until the batch is full, every connected
        client is waiting, or the first request has waited `window_s`."""
        loop = asyncio.get_running_loop()
        while not (waiting := [w for w in self.waiting if not w.result.cancelled()]):  # skip clients gone
            self.arrival.clear()
            await self.arrival.wait()
        self.waiting = waiting
        first = self.waiting[0]
        while len(self._compatible(first)) < self.max_batch and len(self.waiting) < self.clients():
            remaining = first.arrived + self.window_s - loop.time()
            if remaining <= 0:
                break
            self.arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrival.wait(), remaining)
        batch = self._compatible(first)
        self.waiting = [w for w in self.waiting if all(w is not b for b in batch)]
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            start = time.perf_counter()
            observations = [w.request.observation for w in batch]
            try:
                output = await loop.run_in_executor(self.worker, self.infer_batch, observations)
                actions, infos = output if isinstance(output, tuple) else (output, [{}] * len(batch))
                if len(actions) != len(batch) or len(infos) != len(batch):
                    raise ValueError(
                        f"{len(actions)} action chunks and {len(infos)} infos for a batch of {len(batch)}"
                    )
            except Exception as error:  # the server outlives any inference failure
                logger.exception("inference failed for a batch of %d", len(batch))
                outcomes = [error] * len(batch)
            else:
                infer_ms = (time.perf_counter() - start) * 1e3
                self.stats.batch_sizes[len(batch)] += 1
                outcomes = [
                    BatchResult(chunk, infer_ms, len(batch), info)
                    for chunk, info in zip(actions, infos, strict=True)
                ]
            for w, outcome in zip(batch, outcomes, strict=True):
                if w.result.done():
                    continue
                if isinstance(outcome, BatchResult):
                    w.result.set_result(outcome)
                else:
                    w.result.set_exception(outcome)


class _DroppedError(Exception):
    """A connection the server gave up on (the reason is the message)."""


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _glibc(call: Callable[[Any], None]) -> None:
    """`call(libc)` where the C library is glibc; elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        call(ctypes.CDLL("libc.so.6"))


def _release_memory() -> None:
    """Collect cycles now and hand freed heap back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    _glibc(lambda libc: libc.malloc_trim(0))


def _map_large_buffers() -> None:
    """Frame-sized buffers (1 MiB and up) get their own memory maps, returned to the OS when freed.
    By default glibc raises this threshold after large frees (up to 32 MiB), after which frames land
    in the heap and leave it fragmented."""
    _glibc(lambda libc: libc.mallopt(M_MMAP_THRESHOLD, LARGE_FRAME_BYTES))


def _peer(connection: ServerConnection) -> str:
    return ":".join(map(str, (connection.remote_address or ("?",))[:2]))


def _address(connection: ServerConnection) -> str:
    """The client's host, without its port (what a throttle counts by)."""
    return str((connection.remote_address or ("?",))[0])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class PolicyServer:
    """Serves `infer_batch` (e.g. `Policy.infer_batch`) to WebSocket clients. Each observation
    carries its connection's `SESSION_KEY`; `forget(session)` (e.g. `Policy.forget`), run on the
    inference thread, drops a session's state on a `__ctrl__` marker and when it disconnects."""

    def __init__(
        self,
        infer_batch: InferBatch,
        spec: ServingSpec,
        metadata: Mapping[str, Any],
        config: ServerConfig | None = None,
        forget: Callable[[Hashable], None] | None = None,
    ):
        config = config or ServerConfig()
        self.infer_batch, self.spec, self.config, self.forget = infer_batch, spec, config, forget
        self._sessions = itertools.count()
        self.metadata = {
            **metadata,
            "observation": spec.observation_spec(),
            "optional_observation": spec.optional_spec(),
            "key_map": dict(spec.key_map),
            "limits": {
                "max_frame_bytes": config.max_frame_bytes,
                "max_batch": config.max_batch,
                "batch_window_ms": config.batch_window_ms,
            },
        }
        self.stats = ServerStats()
        self.port: int | None = None
        self.auth = AuthGuard(config.max_auth_failures, config.auth_window_s)
        self._decoder: ThreadPoolExecutor | None = None  # frames are decoded here (see `serve`)
        self._stopping, self._answering, self._answered = False, 0, asyncio.Event()

    # ------------------------------------------------------------------ HTTP: health and auth

    def _authorized(self, request: HttpRequest) -> bool:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "api-key"):
            credential = ""
        credential = credential.strip() or next(
            iter(parse_qs(urlsplit(request.path).query).get("token", [])), ""
        )
        return hmac.compare_digest(credential.encode(), (self.config.token or "").encode())

    def _process_request(self, connection: ServerConnection, request: HttpRequest) -> Response | None:
        if urlsplit(request.path).path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        address, c = _address(connection), self.config
        wait = self.auth.blocked_for(address)
        if wait > 0:
            return connection.respond(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed token attempts from {address}: retry in {wait:.0f} s\n",
            )
        if c.token and not self._authorized(request):
            failures = self.auth.fail(address)
            if failures == 1:
                logger.warning("refused peer=%s reason=missing-or-wrong-token", _peer(connection))
            elif failures == c.max_auth_failures:
                logger.warning(
                    "refusing %s for %g s: %d failed token attempts within %g s",
                    address,
                    c.auth_window_s,
                    failures,
                    c.auth_window_s,
                )
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED,
                "a token is required: send 'Authorization: Bearer TOKEN' or connect to ?token=TOKEN\n",
            )
        if self.stats.open_connections >= c.max_connections:
            logger.warning(
                "refused peer=%s reason=at-max-connections (%d)", _peer(connection), c.max_connections
            )
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server is at its limit of {c.max_connections} connections: retry later\n",
            )
        return None

    # ------------------------------------------------------------------ one request

    async def _forget(self, session: int, batcher: Batcher) -> None:
        """Drop `session`'s state, after the inference already queued (so none brings it back)."""
        if self.forget is not None:
            with contextlib.suppress(RuntimeError):  # the worker is gone: the server is stopping
                await asyncio.get_running_loop().run_in_executor(batcher.worker, self.forget, session)

    def _error(self, error: RequestError, counted_as: str = "inference") -> tuple[dict[str, Any], str]:
        """An error reply and its log fragment, counted in `stats.errors[counted_as]`."""
        self.stats.errors[counted_as] += 1
        return error.reply(), f"status=error field={error.field} message={error.message!r}"

    async def _answer(
        self, message: str | bytes, batcher: Batcher, session: int
    ) -> tuple[dict[str, Any], str]:
        """The reply frame's content and a log fragment describing it."""
        try:
            if isinstance(message, str):
                raise RequestError("frame", "got a text frame", "a binary msgpack frame")
            if len(message) > self.config.max_frame_bytes:
                raise RequestError(
                    "frame",
                    f"frame of {len(message)} bytes is over the limit",
                    f"at most {self.config.max_frame_bytes} bytes (downscale images on the client)",
                )
            try:  # off the event loop: a large frame delays only its own client
                decoded = await asyncio.get_running_loop().run_in_executor(self._decoder, unpack, message)
            except DecodeError as error:
                raise RequestError("frame", str(error), "a msgpack map (msgpack-numpy arrays)") from error
            if isinstance(decoded, dict) and "__ctrl__" in decoded:  # openpi's episode markers
                if len(message) > MAX_CONTROL_BYTES:
                    raise RequestError(
                        "__ctrl__",
                        f"a control frame of {len(message)} bytes",
                        f"a short marker such as 'episode_start' (at most {MAX_CONTROL_BYTES} bytes)",
                    )
                await self._forget(session, batcher)
                return {"__ack__": decoded["__ctrl__"]}, "status=ack"
            request = self.spec.parse(decoded)
            request.observation[SESSION_KEY] = session
            if self._stopping:
                raise RequestError(None, "the server is shutting down: no new requests")
        except RequestError as error:
            return self._error(error, str(error.field))
        queued = time.perf_counter()
        try:
            result = await batcher.submit(request)
        except Exception as error:
            return self._error(RequestError(None, f"inference failed: {type(error).__name__}: {error}"))
        if not np.isfinite(result.actions).all():  # never sent as a success
            message = "the policy produced non-finite actions (NaN or infinity) from finite inputs"
            return self._error(RequestError(None, message))
        self.stats.replies += 1
        queue_ms = (time.perf_counter() - queued) * 1e3 - result.infer_ms
        reply = {
            **result.info,
            "actions": result.actions,
            "policy_timing": {"infer_ms": result.infer_ms},
            "server_timing": {"queue_ms": queue_ms, "batch_size": result.batch_size},
        }
        return (
            reply,
            f"status=ok batch={result.batch_size} queue_ms={queue_ms:.1f} infer_ms={result.infer_ms:.1f}",
        )

    async def _send(self, connection: ServerConnection, frame: bytes) -> None:
        """Sends `frame`; a client that does not read it within `send_timeout_s` is dropped."""
        try:
            await asyncio.wait_for(connection.send(frame), self.config.send_timeout_s)
        except TimeoutError:
            connection.transport.abort()
            raise _DroppedError(f"did not read its reply within {self.config.send_timeout_s:g} s") from None

    async def _handle(self, connection: ServerConnection, batcher: Batcher) -> None:
        peer, session, c = _peer(connection), next(self._sessions), self.config
        self.stats.open_connections += 1
        logger.info("connected peer=%s session=%d", peer, session)
        largest, reason = 0, "closed"
        try:
            await self._send(connection, pack(self.metadata))
            prev_total_ms = None
            while True:
                try:
                    message = await asyncio.wait_for(connection.recv(), c.idle_timeout_s)
                except TimeoutError:
                    reason = f"idle for {c.idle_timeout_s:g} s"
                    await connection.close(1000, reason)
                    break
                arrived, largest = time.perf_counter(), max(largest, len(message))
                self._answering += 1
                try:
                    reply, outcome = await self._answer(message, batcher, session)
                    if "actions" in reply:
                        reply["server_timing"]["infer_ms"] = (time.perf_counter() - arrived) * 1e3
                        if prev_total_ms is not None:
                            reply["server_timing"]["prev_total_ms"] = prev_total_ms
                    await self._send(connection, pack(reply))
                finally:
                    self._answering -= 1
                    self._answered.set()
                prev_total_ms = (time.perf_counter() - arrived) * 1e3
                logger.info("request peer=%s %s total_ms=%.1f", peer, outcome, prev_total_ms)
        except ConnectionClosed:
            pass
        except _DroppedError as dropped:
            reason = str(dropped)
        finally:
            self.stats.open_connections -= 1
            await self._forget(session, batcher)
            logger.info("disconnected peer=%s reason=%s", peer, reason)
            if largest >= LARGE_FRAME_BYTES:  # give its buffers back now, not at the next collection
                with contextlib.suppress(RuntimeError):
                    await asyncio.get_running_loop().run_in_executor(self._decoder, _release_memory)

    # ------------------------------------------------------------------ lifecycle

    async def _drain(self) -> None:
        """Waits (at most `DRAIN_TIMEOUT_S`) for the requests being answered to be delivered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self._answering and (left := deadline - loop.time()) > 0:
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), left)

    async def serve(self, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
        """Serves until `stop` is set; then stops accepting connections, answers requests already
        in progress (new ones get an error reply), closes every connection and returns."""
        c = self.config
        _map_large_buffers()
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlaflow-decode")
        self._stopping, self._answering, self._answered = False, 0, asyncio.Event()
        batcher = Batcher(
            self.infer_batch,
            window_s=c.batch_window_ms / 1e3,
            max_batch=c.max_batch,
            clients=lambda: self.stats.open_connections,
            stats=self.stats,
        )
        try:
            server = await serve(
                lambda connection: self._handle(connection, batcher),
                c.host,
                c.port,
                process_request=self._process_request,
                compression=None,
                max_size=c.max_frame_bytes * OVERSIZE_FACTOR,
                max_queue=1,  # frames read ahead of the one being answered
                close_timeout=1.0,  # a client that ignores the closing handshake cannot hold up a stop
            )
        except OSError as error:
            raise ValueError(f"cannot listen on {c.host}:{c.port}: {error.strerror or error}") from error
        batching = asyncio.create_task(batcher.run())
        self.port = server.sockets[0].getsockname()[1]
        if not _is_loopback(c.host) and not c.token:
            logger.warning(
                "listening on %s without a token: anyone who can reach it can drive the robot", c.host
            )
        logger.info(
            "serving on ws://%s:%d (token %s, max batch %d, window %g ms, max frame %d bytes)",
            c.host,
            self.port,
            "required" if c.token else "not required",
            c.max_batch,
            c.batch_window_ms,
            c.max_frame_bytes,
        )
        if ready is not None:
            ready(self.port)
        try:
            await stop.wait()
            self._stopping = True
            server.server.close()  # no new connections
            logger.info(
                "stopping: answering %d requests in progress, then closing %d connections",
                self._answering,
                self.stats.open_connections,
            )
            await self._drain()
        finally:
            server.close()
            await server.wait_closed()
            batching.cancel()
            batcher.worker.shutdown(wait=True, cancel_futures=True)
            self._decoder.shutdown(wait=True, cancel_futures=True)
        logger.info("stopped after %d replies", self.stats.replies)

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT (Ctrl-C)."""

        async def until_signalled() -> None:
            stop = asyncio.Event()

            def on_signal(sig: signal.Signals) -> None:
                if stop.is_set():
                    logger.warning("second %s: exiting now", sig.name)
                    logging.shutdown()
                    os._exit(128 + sig)
                logger.info("%s: stopping (send it again to exit at once)", sig.name)
                stop.set()

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            await self.serve(stop)

        asyncio.run(until_signalled())

    @contextlib.contextmanager
    def in_background(self) -> Iterator[int]:
        """Serves on a background thread (tests, benchmarks) and yields the port."""
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve_in_thread() -> None:
            try:
                loop.run_until_complete(self.serve(stop, ready=lambda _: started.set()))
            except BaseException as error:
                failure.append(error)
                started.set()
            finally:
                loop.close()

        thread = threading.Thread(target=serve_in_thread, name="vlaflow-server", daemon=True)
        thread.start()
        started.wait()
        if failure:
            raise failure[0]
        try:
            yield self.port
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join()
        if failure:
            raise failure[0]


def server_for_policy(
    policy: Policy,
    checkpoint_metadata: Mapping[str, Any],
    *,
    config: ServerConfig | None = None,
    source: str | None = None,
    key_map: str | Mapping[str, str] | None = None,
    robot: Robot | None = None,
    default_prompt: str | None = None,
) -> PolicyServer:
    """A server for a policy loaded from a training checkpoint (`Policy.load`), whose metadata
    (`read_config(checkpoint)["metadata"]`) supplies the state key, a stored key map and the
    control frequency. The policy's `rtc` and `mode` are the server's. `robot`: requests and replies
    in the convention of one of openpi's example clients (`vlaflow.interop.openpi_robots`);
    `default_prompt`: the prompt of requests that carry none."""
    model = policy.model.config
    horizon = model.action_horizon
    action_dim = policy.action_dim
    cameras = policy.stats.cameras
    fast_layout = model.fast_ids == "reference"  # openpi's pi0-FAST fills the slots its own way
    if robot is not None:
        _check_robot(policy, robot)
        cameras = {slot: slot for slot, _ in robot.layout(fast_layout)}
        key_map, action_dim = {}, robot.action_dim
    spec = ServingSpec.from_metadata(
        checkpoint_metadata,
        cameras=cameras,
        state_dim=policy.stats.state.dim,
        source=source if robot is None else None,
        key_map=key_map,
        action_dim=action_dim,
        action_horizon=horizon,
        subtask_required=policy.mode == "oracle",
        adapt=functools.partial(robot.request, fast=fast_layout) if robot is not None else None,
        default_prompt=default_prompt,
    )
    if robot is not None:
        spec = dataclasses.replace(spec, state_key=DEFAULT_STATE_KEY)
    metadata = {
        "server": "vlaflow",
        "vlaflow_version": vlaflow.__version__,
        "robot": robot.name if robot is not None else None,
        "action_dim": action_dim,
        "action_horizon": horizon,
        "actions": {"dtype": "float32", "shape": [horizon, action_dim]},
        "control_hz": control_hz(checkpoint_metadata, source),
        "model": {"pi05": model.pi05, "image_size": model.vision.image_size, "num_steps": policy.num_steps},
        # how training saw the robot, so a client (e.g. a simulator) can render the same way
        "image_sizes": {camera: list(size) for camera, size in policy.stats.image_sizes.items()},
        "tasks": list(policy.stats.tasks),
        # real-time chunking toward a request's prev_actions (None: the hints are checked, not used)
        "rtc": dataclasses.asdict(policy.rtc) if policy.rtc and policy.model.has_expert else None,
        "mode": policy.mode,
        "subtask_every": policy.subtask_every if policy.mode == "hierarchical" else None,
    }
    infer = functools.partial(policy.infer_batch, return_info=True)
    if robot is not None:
        infer = functools.partial(_robot_actions, infer, robot.outputs)
    return PolicyServer(infer, spec, metadata, config, forget=policy.forget)


def _check_robot(policy: Policy, robot: Robot) -> None:
    """The checkpoint's statistics must have the robot's widths (openpi keeps them unpadded)."""
    if policy.stats.state.dim != robot.state_dim or policy.action_dim < robot.action_dim:
        raise ValueError(
            f"the checkpoint's statistics have a state of {policy.stats.state.dim} and actions of "
            f"{policy.action_dim} values; openpi's {robot.name} client sends a state of {robot.state_dim} "
            f"and expects {robot.action_dim} actions (convert with that robot's norm_stats.json)"
        )
    if policy.rtc is not None and robot.name == "aloha":
        raise ValueError(
            "real-time chunking's hints are in ALOHA units, not the model's: no --rtc with aloha"
        )


def _robot_actions(
    infer: Callable[[list[dict[str, Any]]], tuple[list[np.ndarray], list[dict[str, Any]]]],
    outputs: Callable[[np.ndarray], np.ndarray],
    observations: list[dict[str, Any]],
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    actions, infos = infer(observations)
    return [outputs(np.asarray(chunk)) for chunk in actions], infos
