"""Soak benchmark of `vlaflow serve` under attack: valid clients keep driving the server while hostile
clients send decoding bombs, deep nesting, overflowing and absurd inputs, pin memory by never reading
their replies, hold connections open, trickle handshakes, churn connections and guess tokens.

    python -m vlaflow.bench.soak --duration-s 60
    python -m vlaflow.bench.soak --pythonpath OTHER/src --json before.json    # another version's server

The server runs as a `vlaflow serve` subprocess on 127.0.0.1 (never another interface) with a token
and a tiny random-weight pi0.5 (`vlaflow.bench.serve.tiny_checkpoint`). Three phases: valid clients
alone (--warm-s), valid clients and every attack (--duration-s), valid clients alone again after the
attackers left (--quiet-s). Every second it samples the server's resident memory, open file
descriptors and threads; it prints them over time, the valid clients' p50 / p99 / max latency per
phase, what each attack got back, and the server's log line count. Each attacker sends at most
--rate frames per second (a hostile client; 0 floods, which on a small machine also measures the
CPU the attackers themselves take). Each attacker operation has a timeout, so the run ends by
itself even against a server that hangs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from vlaflow.bench.serve import TINY_CAMERAS, TINY_STATE_DIM, tiny_checkpoint
from vlaflow.inference.protocol import pack, unpack

TOKEN = "soak-token"
FRAME_LIMIT = 16 * 2**20  # the server's default --max-frame-bytes
REPLY_TIMEOUT_S = 60.0


def _observation(size: int = 224) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        **{c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in TINY_CAMERAS.values()},
        "observation.state": rng.normal(size=TINY_STATE_DIM).astype(np.float32),
        "prompt": "pick up the cup",
    }


def _connect(port: int, token: str = TOKEN, **kwargs: Any) -> websockets.sync.client.ClientConnection:
    return websockets.sync.client.connect(
        f"ws://127.0.0.1:{port}/?token={token}", compression=None, max_size=None, open_timeout=30, **kwargs
    )


def _outcome(connection: websockets.sync.client.ClientConnection, frame: bytes) -> str:
    """What the server did with one frame: its error field, ok (finite actions), nan-actions, or how
    the connection ended."""
    try:
        connection.send(frame)
        reply = unpack(connection.recv(timeout=REPLY_TIMEOUT_S))
    except TimeoutError:
        return "no reply in 60 s"
    except ConnectionClosed as closed:
        return f"closed {closed.rcvd.code if closed.rcvd else 'abruptly'}"
    if "error" in reply:
        return f"error: {reply['error']['field']}"
    if "actions" in reply:
        return "ok" if np.isfinite(reply["actions"]).all() else "NON-FINITE ACTIONS SENT"
    return f"reply {sorted(reply)}"


def _frames() -> dict[str, bytes]:
    """The hostile frames, each inside the server's default frame limit."""
    count = FRAME_LIMIT - 5
    good = _observation()
    overflow = {**good, "observation.state": np.full(TINY_STATE_DIM, 1e39)}  # float64: inf as float32
    thin = {**good, "observation.images.corner2": np.zeros((1, 5_000_000, 3), np.uint8)}
    return {
        "bomb: 16.7 M empty arrays": b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count,
        "bomb: 16.7 M empty maps": b"\xdd" + count.to_bytes(4, "big") + b"\x80" * count,
        "nesting 100k deep": b"\x91" * 100_000 + b"\xc0",
        "state 1e39 (float64)": pack(overflow),
        "image 1 x 5,000,000": pack(thin),
    }


class Soak:
    def __init__(self, port: int, pid: int, rate: float) -> None:
        self.port, self.pid, self.rate = port, pid, rate
        self.stop = threading.Event()  # everything ends
        self.ceasefire = threading.Event()  # the attacks end
        self.phase = "warm"
        self.latencies: dict[str, list[float]] = {"warm": [], "attack": [], "quiet": []}
        self.valid_failures: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = {}
        self.samples: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def record(self, attack: str, outcome: str) -> None:
        with self.lock:
            self.outcomes.setdefault(attack, Counter())[outcome] += 1

    # ---------------------------------------------------------------- valid clients and sampling

    def valid_client(self) -> None:
        request = pack(_observation())
        while not self.stop.is_set():
            try:
                with _connect(self.port) as connection:
                    connection.recv(timeout=REPLY_TIMEOUT_S)
                    while not self.stop.is_set():
                        start = time.perf_counter()
                        connection.send(request)
                        reply = unpack(connection.recv(timeout=REPLY_TIMEOUT_S))
                        if "actions" not in reply:
                            self.valid_failures[f"error reply: {reply.get('error')}"] += 1
                            continue
                        self.latencies[self.phase].append((time.perf_counter() - start) * 1e3)
            except (OSError, TimeoutError, ConnectionClosed, InvalidStatus) as error:
                self.valid_failures[type(error).__name__] += 1
                time.sleep(0.2)

    def sample(self, start: float) -> None:
        while not self.stop.is_set():
            status = (
                Path(f"/proc/{self.pid}/status").read_text() if Path(f"/proc/{self.pid}").exists() else ""
            )
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            try:
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except OSError:
                fds = -1
            self.samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "phase": self.phase,
                    "rss_mb": int(fields.get("VmRSS", "0 kB").split()[0]) / 1024,
                    "fds": fds,
                    "threads": int(fields.get("Threads", "0")),
                }
            )
            self.stop.wait(1.0)

    # ---------------------------------------------------------------- attacks (each loops until stopped)

    def pace(self) -> None:
        """Waits between an attacker's frames (`rate` per second; 0: none, a flood)."""
        if self.rate > 0:
            self.ceasefire.wait(1.0 / self.rate)

    def frames_attack(self, name: str, frame: bytes) -> None:
        while not self.ceasefire.is_set():
            try:
                with _connect(self.port) as connection:
                    connection.recv(timeout=REPLY_TIMEOUT_S)
                    while not self.ceasefire.is_set():
                        outcome = _outcome(connection, frame)
                        self.record(name, outcome)
                        if outcome.startswith(("closed", "no reply")):
                            break
                        self.pace()
            except (OSError, TimeoutError, ConnectionClosed, InvalidStatus) as error:
                self.record(name, f"connect: {type(error).__name__}")
                self.ceasefire.wait(1.0)

    def hog(self) -> None:
        """A 15 MB control echo it never reads, then 15 MB frames pipelined behind it, held 5 s."""
        ctrl = pack({"__ctrl__": "x" * 15_000_000})
        blob = pack(b"\0" * 15_000_000)
        while not self.ceasefire.is_set():
            sent = 0
            try:
                with _connect(self.port, max_queue=1) as connection:  # reads at most one reply ahead
                    connection.socket.settimeout(5.0)
                    connection.send(ctrl)
                    for _ in range(30):
                        if self.ceasefire.is_set():
                            break
                        connection.send(blob)
                        sent += 1
                        self.pace()
                    self.ceasefire.wait(5.0)
            except (OSError, TimeoutError, ConnectionClosed, InvalidStatus) as error:
                self.record("never reads, pipelines 15 MB frames", f"ended by {type(error).__name__}")
            self.record("never reads, pipelines 15 MB frames", f"sent {sent} of 30 frames (5 s each at most)")

    def idle(self, count: int = 20) -> None:
        connections = []
        for _ in range(count):
            try:
                connections.append(_connect(self.port))
            except (OSError, TimeoutError, InvalidStatus) as error:
                self.record("idle connections", f"refused: {type(error).__name__}")
        self.ceasefire.wait()
        alive = 0
        for connection in connections:
            try:
                connection.ping().wait(2.0)
                alive += 1
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            connection.close()
        self.record("idle connections", f"{alive} of {len(connections)} still open at the end")

    def slowloris(self) -> None:
        request = f"GET /?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode()
        while not self.ceasefire.is_set():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as sock:
                try:
                    for i in range(len(request)):
                        sock.sendall(request[i : i + 1])
                        if self.ceasefire.wait(1.0):
                            break
                    self.record("handshake at 1 byte/s", "still open after the whole header")
                except OSError as error:
                    self.record("handshake at 1 byte/s", f"dropped after {i} bytes ({type(error).__name__})")

    def churn(self) -> None:
        while not self.ceasefire.is_set():
            try:
                with _connect(self.port) as connection:
                    connection.recv(timeout=REPLY_TIMEOUT_S)
                self.record("connect + disconnect", "ok")
            except (OSError, TimeoutError, ConnectionClosed, InvalidStatus) as error:
                self.record("connect + disconnect", f"{type(error).__name__}")
            self.ceasefire.wait(0.02)

    def guess_tokens(self) -> None:
        """From its own loopback address (127.0.0.2), so that the throttle meant for it does not
        also refuse the other attackers, which share 127.0.0.1 with the valid clients."""
        while not self.ceasefire.is_set():
            try:
                sock = socket.socket()
                sock.settimeout(30)
                sock.bind(("127.0.0.2", 0))
                sock.connect(("127.0.0.1", self.port))
                _connect(self.port, token="guess", sock=sock).close()
                self.record("wrong token", "ACCEPTED")
            except InvalidStatus as refused:
                self.record("wrong token", f"HTTP {refused.response.status_code}")
            except (OSError, TimeoutError) as error:
                self.record("wrong token", type(error).__name__)
            self.ceasefire.wait(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {"requests": 0}
    return {
        "requests": len(values),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(np.max(values)),
    }


def run(
    *, duration_s: float, warm_s: float, quiet_s: float, pythonpath: str | None, clients: int, rate: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = tiny_checkpoint(Path(scratch) / "tiny")
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        log = Path(scratch) / "server.log"
        command = [sys.executable, "-m", "vlaflow.cli", "serve", "--checkpoint", str(checkpoint)]
        command += ["--port", str(port), "--token", TOKEN, "--num-steps", "2"]
        with open(log, "w") as log_file:
            server = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            soak = Soak(port, server.pid, rate)
            start = time.monotonic()
            background = [threading.Thread(target=soak.sample, args=(start,), daemon=True)]
            background += [threading.Thread(target=soak.valid_client, daemon=True) for _ in range(clients)]
            for thread in background:
                thread.start()
            time.sleep(warm_s)
            soak.phase = "attack"
            attacks: list[Callable[[], None]] = [
                *(lambda n=name, f=frame: soak.frames_attack(n, f) for name, frame in _frames().items()),
                soak.hog,
                soak.hog,
                soak.idle,
                soak.slowloris,
                soak.churn,
                soak.guess_tokens,
            ]
            attackers = [threading.Thread(target=attack, daemon=True) for attack in attacks]
            for thread in attackers:
                thread.start()
            time.sleep(duration_s)
            soak.ceasefire.set()
            for thread in attackers:
                thread.join(REPLY_TIMEOUT_S + 10)
            soak.phase = "quiet"
            time.sleep(quiet_s)
            soak.stop.set()
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        lines = log.read_text().splitlines()
    by_phase = {
        phase: [s for s in soak.samples if s["phase"] == phase] for phase in ("warm", "attack", "quiet")
    }
    return {
        "server": pythonpath or "this checkout",
        "duration_s": duration_s,
        "attack_rate_per_s": rate,
        "valid_clients": clients,
        "alive_after_attacks": alive,
        "latency": {phase: _latency(values) for phase, values in soak.latencies.items()},
        "valid_failures": dict(soak.valid_failures),
        "rss_mb": {
            "end_of_warm": by_phase["warm"][-1]["rss_mb"] if by_phase["warm"] else None,
            "max_under_attack": max((s["rss_mb"] for s in by_phase["attack"]), default=None),
            "end_of_quiet": by_phase["quiet"][-1]["rss_mb"] if by_phase["quiet"] else None,
        },
        "fds": {
            "end_of_warm": by_phase["warm"][-1]["fds"] if by_phase["warm"] else None,
            "max_under_attack": max((s["fds"] for s in by_phase["attack"]), default=None),
            "end_of_quiet": by_phase["quiet"][-1]["fds"] if by_phase["quiet"] else None,
        },
        "attacks": {name: dict(outcomes.most_common()) for name, outcomes in soak.outcomes.items()},
        "log_lines": len(lines),
        "warning_lines": sum(" WARNING " in line for line in lines),
        "samples": soak.samples,
    }


def report(result: dict[str, Any]) -> str:
    rate = result["attack_rate_per_s"] or "as fast as they can"
    lines = [
        f"server: {result['server']}; attackers' frames per second each: {rate}; "
        f"alive after the attacks: {result['alive_after_attacks']}"
    ]
    for phase, latency in result["latency"].items():
        if latency["requests"]:
            lines.append(
                f"  valid clients, {phase:>6}: {latency['requests']:5d} requests, p50 "
                f"{latency['p50_ms']:7.1f} ms, p99 {latency['p99_ms']:8.1f} ms, "
                f"max {latency['max_ms']:8.1f} ms"
            )
        else:
            lines.append(f"  valid clients, {phase:>6}: no request answered")
    lines.append(f"  valid client failures: {result['valid_failures'] or 'none'}")
    rss, fds = result["rss_mb"], result["fds"]
    lines.append(
        f"  RSS MB: {rss['end_of_warm']:.0f} before, {rss['max_under_attack']:.0f} max under attack, "
        f"{rss['end_of_quiet']:.0f} after;  fds: {fds['end_of_warm']} / {fds['max_under_attack']} / "
        f"{fds['end_of_quiet']};  log lines {result['log_lines']} ({result['warning_lines']} warnings)"
    )
    for name, outcomes in result["attacks"].items():
        shown = ", ".join(f"{outcome} x{n}" for outcome, n in outcomes.items())
        lines.append(f"  {name:>36}: {shown}")
    lines.append("  t(s)  phase   RSS MB  fds  threads")
    lines += [
        f"  {s['t']:5.0f}  {s['phase']:6} {s['rss_mb']:7.0f} {s['fds']:4d} {s['threads']:7d}"
        for s in result["samples"][:: max(1, len(result["samples"]) // 30)]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=60.0, help="how long the attacks last")
    parser.add_argument("--warm-s", type=float, default=10.0, help="valid clients alone, before")
    parser.add_argument("--quiet-s", type=float, default=15.0, help="valid clients alone, after")
    parser.add_argument("--clients", type=int, default=2, help="valid clients")
    parser.add_argument(
        "--rate",
        type=float,
        default=2.0,
        help="frames per second of each frame attacker (0: as fast as it can)",
    )
    parser.add_argument("--pythonpath", help="serve another checkout's code (its src directory)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = run(
        duration_s=args.duration_s,
        warm_s=args.warm_s,
        quiet_s=args.quiet_s,
        pythonpath=args.pythonpath,
        clients=args.clients,
        rate=args.rate,
    )
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
