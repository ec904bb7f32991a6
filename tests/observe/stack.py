"""A real observability stack on loopback for integration tests: Prometheus and Alertmanager (Debian
binaries, no systemd), an HTTP recorder standing in for Slack, PagerDuty and the wallet service's webhook,
and the daemon `spendwatch run` runs (an Assembly of watcher.stages: detection, breakers, statements,
metrics and /metrics) fed by fleet simulators through the real broker, in its own thread and loop;
`serve_registry` serves the registry of another process (chain bridge, facilitator tap) for Prometheus.

The rules and the Alertmanager configuration are test copies generated from the committed files:
shorter `for:` and group timings, receivers pointed at the recorder; routes and inhibitions unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from prometheus_client import start_http_server

from tests.polling import wait_for_sync

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "rules.yml"
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed: apt-get install prometheus prometheus-alertmanager "
                    "(./run test installs them as root)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, data: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


# -- test copies of the committed configuration ---------------------------------------------------------
def rules_copy(dst: Path, for_: str = "2s") -> Path:
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            if "for" in r:
                r["for"] = for_
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def alertmanager_copy(dst: Path, recorder_url: str) -> Path:
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    doc["route"].update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    for rec in doc["receivers"]:
        for sc in rec.get("slack_configs", []):
            sc.pop("api_url_file", None)
            sc["api_url"] = f"{recorder_url}/slack"
        for pd in rec.get("pagerduty_configs", []):
            pd.pop("routing_key_file", None)
            pd["routing_key"] = "test-routing-key"
            pd["url"] = f"{recorder_url}/pagerduty"
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


# -- the recorder -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Post:
    path: str
    body: dict          # the parsed JSON ({"raw": text} if it was not JSON)
    raw: bytes
    headers: dict[str, str]


class Recorder:
    """Records every POST. Answers like Slack (200 ok), PagerDuty (202) and a wallet service (200)."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = {"raw": body.decode(errors="replace")}
                with outer.lock:
                    outer.posts.append(Post(self.path, parsed, body, dict(self.headers.items())))
                if self.path.startswith("/pagerduty"):
                    self.send_response(202)
                    payload = b'{"status":"success","message":"Event processed"}'
                else:
                    self.send_response(200)
                    payload = b"ok"
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self, path: str) -> list[dict]:
        return [p.body for p in self.at(path)]

    def at(self, path: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if p.path.startswith(path)]


# -- Prometheus and Alertmanager -----------------------------------------------------------------------
class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.fh = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.fh.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_alertmanager(tmp: Path, config: Path) -> tuple[Process, str]:
    binary = need("prometheus-alertmanager")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp / "am-data").mkdir()
    p = Process([binary, f"--config.file={config}", f"--storage.path={tmp / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url={url}",
                 "--cluster.listen-address="], tmp / "alertmanager.log")
    _ready(p, f"{url}/-/ready", "alertmanager")
    return p, url


def start_prometheus(tmp: Path, targets: dict[str, str], rules: Path, alertmanager: str) -> tuple[Process, str]:
    binary = need("prometheus")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
           "rule_files": [str(rules)],
           "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.split("//")[1]]}]}]},
           "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                              for job, target in targets.items()]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    (tmp / "prom-data").mkdir()
    p = Process([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'prom-data'}",
                 f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url={url}"], tmp / "prometheus.log")
    _ready(p, f"{url}/-/ready", "prometheus")
    return p, url


def _ready(p: Process, url: str, name: str) -> None:
    def ok():
        if p.proc.poll() is not None:
            raise AssertionError(f"{name} exited with {p.proc.returncode}:\n{p.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for_sync(ok, 30, f"{name} ready")


def query(prom: str, expr: str) -> dict:
    return get_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


@contextlib.contextmanager
def serve_registry(registry) -> Iterator[str]:
    """A registry's /metrics on a free loopback port ("127.0.0.1:port"), as a process of its own serves it."""
    port = free_port()
    server, thread = start_http_server(port, "127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the daemon `spendwatch run` runs, fed by fleet simulators, in its own thread ----------------------------
class DaemonThread:
    """Runs `assembly.daemon()` (an Assembly, as watcher.cli.run.assemble builds it for `spendwatch run`) and
    a simulator per (fleet, payments/s), publishing to the real broker, in a thread with its own event loop."""

    def __init__(self, assembly, traffic: list[tuple[object, float]]) -> None:
        self.assembly, self.settings, self.service = assembly, assembly.settings, assembly.metrics_service
        self.traffic = traffic
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.daemon = None
        self._sighup = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by the tests
            self.error = exc

    async def _main(self) -> None:
        from watcher.simulate.publish import run_simulator

        self.loop = asyncio.get_running_loop()
        self.stop_traffic, self.stop_all = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(self.daemon.run())
        started = asyncio.create_task(self.daemon.started.wait())  # topics exist, partitions assigned
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        sims = [asyncio.create_task(run_simulator(self.settings.kafka, fleet, rate_per_s=rate, duration_s=None,
                                                  stop=self.stop_traffic)) for fleet, rate in self.traffic]
        stop = asyncio.create_task(self.stop_all.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        self.stop_traffic.set()
        await asyncio.gather(*sims)
        self.daemon.request_stop()
        await asyncio.wait_for(task, 60)

    def start(self) -> "DaemonThread":
        # Assembly.daemon() installs the policy file's SIGHUP handler, which only the main thread may do;
        # stop() gives the test process its own handler back
        self._sighup = signal.getsignal(signal.SIGHUP)
        self.daemon = self.assembly.daemon()
        self.thread.start()
        wait_for_sync(lambda: self.error or self.service.port, 60, "the daemon's /metrics server")
        if self.error:
            raise self.error
        return self

    def call(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop_traffic_now(self) -> None:
        self.call(self.stop_traffic.set)

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.call(self.stop_all.set)
        self.thread.join(90)
        if self.daemon is not None:
            signal.signal(signal.SIGHUP, self._sighup if self._sighup is not None else signal.SIG_DFL)
        if self.error:
            raise self.error
