"""`spendwatch facilitator`: --help, and serve() forwarding to an upstream with records on the real broker."""

from __future__ import annotations

import argparse
import asyncio

import httpx
import pytest

from watcher.tap import cli
from watcher.tap.bench import _bodies, _stub


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spendwatch")
    cli.register(p.add_subparsers(dest="command"))
    return p


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["facilitator", "--help"])
    out = capsys.readouterr().out
    for opt in ("--upstream", "--bootstrap", "--breaker-topic", "--admin-url", "--fail", "--buffer", "--port"):
        assert opt in out


@pytest.mark.integration
async def test_serve_forwards_and_records(kafka_bootstrap, unique):
    runner, upstream = await _stub()
    try:
        args = parser().parse_args(["facilitator", "--upstream", upstream, "--port", "0", "--bootstrap",
                                    kafka_bootstrap, "--topic", f"pay-{unique}", "--breaker-topic", f"brk-{unique}"])
        stop, ready = asyncio.Event(), asyncio.Future()
        task = asyncio.create_task(cli.serve(args, ready=ready.set_result, stop=stop))
        proxy = await asyncio.wait_for(ready, 30)
        async with httpx.AsyncClient() as c:
            r = await c.post(f"{proxy.url}/verify", content=_bodies(1)[0], headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["isValid"] is True
            assert (await c.get(f"{proxy.url}/healthz")).json()["counts"]["verify"] == 1
            assert b"spendwatch_tap_records_total" in (await c.get(f"{proxy.url}/metrics")).content
        await asyncio.sleep(0.5)
        stop.set()
        counts = await asyncio.wait_for(task, 30)
        assert counts["verify"] == 1 and counts["published"] == 1 and counts["dropped"] == 0
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("breakers", [["--no-breakers"], [], ["--admin-url", "http://127.0.0.1:9"]],
                         ids=["none", "topic", "admin"])
def test_a_taken_port_exits_1_and_closes_the_upstream_session(tmp_path, breakers):
    """The bind fails after the upstream session opened: it is closed on that path (no "Unclosed client
    session" at exit), the breaker view stops although Kafka is unreachable (its consumer was bootstrapping
    when cancelled), and the process says which port and which option."""
    import os
    import socket
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDWATCH_")}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "watcher", "facilitator", "--upstream", "http://127.0.0.1:9",
                            "--port", str(port), "--bootstrap", "127.0.0.1:1", *breakers],
                           capture_output=True, text=True, timeout=120,
                           env={**env, "COLUMNS": "400", "SPENDWATCH_ADMIN_TOKEN": "0123456789abcdef0123"})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "address already in use" in out and str(port) in out and "--port" in out, out
    assert "Unclosed" not in out and "Traceback" not in out, out
