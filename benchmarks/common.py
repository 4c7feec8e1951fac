"""What the benchmarks share: payloads, a broker of their own, a fast lossless publisher,
reference subscribers, and the meter of a process (CPU seconds, peak memory).

Every scenario measures unsflow and its reference in the same run, one after the
other on the same broker (a Mosquitto of the benchmark's own, on free ports, so
that no test shares it), and reports the ratio: on a shared machine absolute
figures swing with the load; the ratio of two runs a few seconds apart is the
figure to compare.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from unsflow.sources import _mqtt_wire as wire

TOPIC = "bench/site1/line1/press/vibration"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(seq: int, size: int = 0) -> bytes:
    """A JSON reading: ``{"seq", "value", "ts", "machine"}``, padded with a ``note`` field to
    about ``size`` bytes (0: no padding, about 69 bytes)."""
    base = b'{"seq":%d,"value":%.3f,"ts":%d,"machine":"press-07"' % (
        seq, 12.0 + (seq % 600) / 100, 1_763_000_000_000 + seq)
    pad = size - len(base) - 11
    if pad > 0:
        return base + b',"note":"' + b"x" * pad + b'"}'
    return base + b"}"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakAnon:
    """The peak of a process's anonymous RSS (RssAnon: its own memory, without the pages
    of the files it maps), sampled every 10 ms in a thread while in the ``with`` block.
    The kernel keeps a high-water mark of the whole RSS only (VmHWM), whose file-backed
    part depends on how the page cache holds the shared libraries."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        path = Path(f"/proc/{self.pid}/status")
        while not self._stop.wait(0.01):
            try:
                text = path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                    break

    @property
    def mib(self) -> float:
        return self.peak_kib / 1024

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds per thread name (threads of one name summed) of a live
    process: e.g. librdkafka's ``rdk:*`` threads apart from Python's main thread."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, _, rest = (task / "stat").read_text().partition(" (")[2].rpartition(")")
        except OSError:  # the thread ended
            continue
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ------------------------------------------------------------------ a broker of its own


@dataclass
class Broker:
    host: str
    port: int
    workdir: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return int((self.workdir / "services" / "mosquitto" / "mosquitto.pid").read_text())


@contextmanager
def own_broker(extra_conf: str = "queue_qos0_messages true") -> Iterator[Broker]:
    """A Mosquitto started by scripts/services.sh in a temporary directory on free ports."""
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-"))
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services"),
           "UNSFLOW_MQTT_PORT": str(free_port()), "UNSFLOW_MQTTS_PORT": str(free_port()),
           "UNSFLOW_MQTT_EXTRA_CONF": extra_conf}
    subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "up", "mosquitto"],
                   env=env, check=True, capture_output=True, text=True)
    info = json.loads((workdir / "services" / "mosquitto" / "info.json").read_text())
    try:
        yield Broker(info["host"], info["port"], workdir, env)
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "down", "mosquitto"],
                       env=env, check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ a fast lossless publisher


def encode_stream(count: int, size: int, qos: int, topic: str = TOPIC,
                  start: int = 0) -> list[bytes]:
    """PUBLISH packets (MQTT 3.1.1) of ``count`` numbered payloads; packet ids cycle 1..65535."""
    return [wire.encode_publish(topic, payload(start + i, size), qos, (i % 65535) + 1 if qos else 0)
            for i in range(count)]


async def publish_packets(host: str, port: int, packets: list[bytes], *, qos: int,
                          window: int = 1000, rate: float | None = None,
                          client_id: str | None = None) -> float:
    """Send ``packets`` (from :func:`encode_stream`), at most ``window`` unacknowledged,
    optionally paced at ``rate`` messages/s; return the seconds from the first byte to the
    last PUBACK (QoS 1) or the last write (QoS 0). Raises if an acknowledgement is missing.

    Much faster than a paho loop (a few µs per message): what the live scenarios need,
    so that the publisher is not what is measured.
    """
    reader, writer = await asyncio.open_connection(host, port)
    cid = client_id or f"bench-pub-{os.getpid()}-{time.monotonic_ns()}"
    writer.write(wire.encode_connect(cid, v5=False, clean_start=True, keepalive=60))
    head = await reader.readexactly(4)
    if head[0] != 0x20 or head[3] != 0:
        raise ConnectionError(f"broker refused the publisher: {head!r}")
    acked = 0
    room = asyncio.Semaphore(window)
    done = asyncio.Event()
    total = len(packets)

    async def read_acks() -> None:
        nonlocal acked
        buf = b""
        while acked < total:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("broker closed the publisher's connection")
            buf += chunk
            n = len(buf) // 4  # every PUBACK of MQTT 3.1.1 is 4 bytes
            for i in range(n):
                if buf[4 * i] != 0x40:
                    raise ConnectionError(f"unexpected packet {buf[4 * i]:#x} for the publisher")
                room.release()
            acked += n
            buf = buf[4 * n:]
        done.set()

    acks = asyncio.create_task(read_acks()) if qos else None
    t0 = time.perf_counter()
    step = 64 if rate is None else max(1, int(rate / 1000))
    for i in range(0, total, step):
        chunk = packets[i:i + step]
        if qos:
            for _ in chunk:
                await room.acquire()
        writer.write(b"".join(chunk))
        if rate is not None:
            wait = t0 + (i + len(chunk)) / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        if writer.transport.get_write_buffer_size() > 4 << 20:
            await writer.drain()
    await writer.drain()
    if acks is not None:
        await asyncio.wait_for(done.wait(), 600)
        acks.result() if acks.done() else None
    elapsed = time.perf_counter() - t0
    writer.write(b"\xe0\x00")
    await writer.drain()
    writer.close()
    return elapsed


def publish_backlog(broker: Broker, count: int, size: int, qos: int = 1,
                    topic: str = TOPIC) -> None:
    """Queue ``count`` messages (published at QoS 1, every PUBACK awaited)."""
    packets = encode_stream(count, size, 1, topic)
    asyncio.run(publish_packets(broker.host, broker.port, packets, qos=1))


def make_session(broker: Broker, client_id: str, qos: int, topic_filter: str = "bench/#") -> None:
    """A persistent session subscribed to ``topic_filter`` for ``client_id`` (then offline)."""
    subprocess.run(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-c", "-i",
                    client_id, "-q", str(qos), "-t", topic_filter, "-E"], check=True)


def end_session(broker: Broker, client_id: str) -> None:
    from unsflow.testing.mqtt import end_session as end

    end(broker.host, broker.port, client_id)


# ------------------------------------------------------------------ the reference subscriber


@dataclass
class Measured:
    """One side of a scenario."""

    seconds: float
    messages: int
    cpu_s: float
    peak_rss_mib: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


def mosquitto_sub(broker: Broker, qos: int, count: int, *, client_id: str | None = None,
                  topic_filter: str = "bench/#") -> subprocess.Popen[bytes]:
    """``mosquitto_sub -q QOS -C COUNT`` (persistent when ``client_id``), output discarded."""
    args = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
            "-t", topic_filter, "-C", str(count)]
    if client_id:
        args[1:1] = ["-c", "-i", client_id]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL)


def wait_child(proc: subprocess.Popen[bytes], timeout: float = 600) -> tuple[float, float]:
    """Wait for a child; (CPU seconds, peak RSS MiB) from its rusage."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
            return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{proc.args[0]} did not finish in {timeout:.0f}s")
        time.sleep(0.002)


# ------------------------------------------------------------------ unsflow as a user runs it


class Unsflow:
    """``unsflow run CONFIG`` in a child process: started, watched, metered, stopped."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str,
                 env: dict[str, str] | None = None) -> None:
        config = {"http": {"port": 0}, "dead-letter": {"path": str(workdir / f"{name}.dead")},
                  "spool": {"path": str(workdir / f"{name}.spool")}, **config}
        self.path = workdir / f"{name}.json"
        self.path.write_text(json.dumps(config))
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self._pid = 0
        self.lines: list[str] = []

    def start(self, ready: str = "connected to", timeout: float = 120) -> None:
        command = [sys.executable, "-m", "unsflow.cli", "run", str(self.path)]
        profile = os.environ.get("UNSFLOW_BENCH_PROFILE")
        if profile:  # a py-spy profile of unsflow (collapsed stacks), for benchmarks/profile.py
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            out = f"{profile}.{self.path.stem}.txt"
            command = [spy, "record", "-r", "200", "--threads", *(["--native"] if os.environ.get("UNSFLOW_BENCH_PROFILE_NATIVE") else []), "-f", "raw", "-o", out, "--", *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=self.env)
        self._pid = self.proc.pid
        self.wait_log(ready, timeout)
        if profile:  # meter the profiled process, not py-spy
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            deadline = time.monotonic() + 10
            while not children.read_text().split() and time.monotonic() < deadline:
                time.sleep(0.01)
            self._pid = int(children.read_text().split()[0])

    def wait_log(self, text: str, timeout: float = 120) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self.lines.append(line)
            if text in line:
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"unsflow never logged {text!r}:\n{''.join(self.lines[-20:])}")

    @property
    def pid(self) -> int:
        """The unsflow process (not py-spy's, when profiled)."""
        return self._pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self._pid != self.proc.pid:
            os.kill(self._pid, 15)  # py-spy writes its profile when unsflow ends, then exits
        else:
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def count_rows(root: Path) -> int:
    import pyarrow.parquet as pq

    total = 0
    for f in root.rglob("*.parquet"):
        if f.name.startswith("."):
            continue
        try:
            total += pq.read_metadata(f).num_rows
        except OSError:
            pass
    return total


def wait_rows(lake: Path, count: int, timeout: float = 600, every: float = 0.02) -> float:
    """Wait until ``count`` rows are durably in the lake; returns perf_counter() then."""
    deadline = time.monotonic() + timeout
    seen = -1
    while True:
        rows = count_rows(lake)
        if rows >= count:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rows} of {count} rows after {timeout:.0f}s")
        if rows != seen:
            seen = rows
        time.sleep(every)
