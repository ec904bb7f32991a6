"""Offline Solidity compilation with the pinned npm package `solc` (solc-js) in tools/npm.

`compile_contract(source_path, name)` returns the ABI and creation bytecode. Input goes through solc's
standard-JSON interface (the `solcjs` CLI has no --evm-version) with evmVersion "paris", so the bytecode
runs on any node. The artifact is cached under `.spendwatch/solc/` (gitignored), keyed by the sha256 of
the source and the settings, so only the first run pays the ~2 s compile.

`ensure_npm_tools()` runs `npm ci` in tools/npm when node_modules is missing (a fresh clone).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from watcher.errors import SpendwatchError

REPO_ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = Path(os.environ.get("SPENDWATCH_NPM_DIR", REPO_ROOT / "tools" / "npm"))
CACHE_DIR = Path(os.environ.get("SPENDWATCH_CACHE_DIR", REPO_ROOT / ".spendwatch"))
SOLC_VERSION = "0.8.37"
EVM_VERSION = "paris"

_COMPILE_JS = r"""
const solc = require('solc');
let data = '';
process.stdin.on('data', c => { data += c; });
process.stdin.on('end', () => { process.stdout.write(solc.compile(data)); });
"""


class ToolError(SpendwatchError):
    """node, npm, solc or anvil is missing or failed; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: list
    bytecode: str  # 0x-prefixed creation code


def ensure_npm_tools(npm_dir: Path = NPM_DIR, *, timeout_seconds: float = 300) -> Path:
    """tools/npm/node_modules, installed with `npm ci` if absent. Returns the node_modules path."""
    modules = npm_dir / "node_modules"
    marker = modules / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if marker.exists() and (modules / "solc" / "package.json").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise ToolError(f"npm is not on PATH; install Node.js 20+ and run `npm ci` in {npm_dir}")
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=npm_dir, capture_output=True,
                          text=True, timeout=timeout_seconds)
    if proc.returncode != 0:
        raise ToolError(f"`npm ci` in {npm_dir} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return modules


def anvil_binary(npm_dir: Path = NPM_DIR) -> Path:
    """The anvil executable itself (not the bin.mjs wrapper, whose child outlives a killed wrapper)."""
    override = os.environ.get("SPENDWATCH_ANVIL")
    if override:
        return Path(override)
    path = ensure_npm_tools(npm_dir) / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if not path.exists():
        raise ToolError(f"{path} is missing: this platform needs another @foundry-rs/anvil-* package; "
                        f"set SPENDWATCH_ANVIL to an anvil 1.7 binary")
    return path


def compile_contract(source: Path, contract: str, *, npm_dir: Path = NPM_DIR,
                     cache_dir: Path = CACHE_DIR, timeout_seconds: float = 120) -> Artifact:
    text = source.read_text()
    std_input = {
        "language": "Solidity",
        "sources": {source.name: {"content": text}},
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {source.name: {contract: ["abi", "evm.bytecode.object"]}},
        },
    }
    payload = json.dumps(std_input, sort_keys=True)
    digest = hashlib.sha256(f"{SOLC_VERSION}\n{payload}".encode()).hexdigest()[:16]
    cached = cache_dir / "solc" / f"{contract}-{digest}.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        return Artifact(contract, data["abi"], data["bytecode"])
    ensure_npm_tools(npm_dir)
    node = shutil.which("node")
    if node is None:
        raise ToolError("node is not on PATH; install Node.js 20+ to compile the test contracts")
    proc = subprocess.run([node, "-e", _COMPILE_JS], cwd=npm_dir, input=payload, capture_output=True,
                          text=True, timeout=timeout_seconds)
    if proc.returncode != 0:
        raise ToolError(f"solc-js failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ToolError("solc: " + "\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    entry = out["contracts"][source.name][contract]
    artifact = Artifact(contract, entry["abi"], "0x" + entry["evm"]["bytecode"]["object"])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"abi": artifact.abi, "bytecode": artifact.bytecode, "solc": SOLC_VERSION}))
    tmp.replace(cached)
    return artifact
