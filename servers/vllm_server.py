"""One vLLM OpenAI-compatible server with a clean life cycle: start, wait until ready, stop.

The server runs in its own process group (its engine processes too), logs to a file, and is ready when
`/v1/models` answers. Stopping sends SIGTERM to the whole group and SIGKILL after a grace period, so no
engine process outlives it. vLLM runs under any Python (`python`): its own environment, as users often have.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from servers.profiles import ModelProfile

VLLM_PYTHON_ENV = "SHOPPING_MMLU_VLLM_PYTHON"


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the log's last lines."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_gpu() -> bool:
    """True when nvidia-smi lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def vllm_python() -> str:
    """The Python that runs vLLM: $SHOPPING_MMLU_VLLM_PYTHON, else this one."""
    return os.environ.get(VLLM_PYTHON_ENV) or sys.executable


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class VLLMServer:
    """A vLLM server for one profile. `weights` is what to load (a local folder or the profile's hub id)."""

    profile: ModelProfile
    weights: str
    log_path: Path
    device: str = "auto"  # "gpu", "cpu" or "auto"
    gpu_ids: list[int] | None = None
    port: int | None = None
    python: str = field(default_factory=vllm_python)
    startup_timeout: float = 900.0
    grace: float = 30.0
    cpu_kv_cache_gib: int = 2
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def resolved_device(self) -> str:
        return ("gpu" if has_gpu() else "cpu") if self.device == "auto" else self.device

    def command(self) -> list[str]:
        p = self.profile
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.weights,
               "--served-model-name", p.name, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", p.dtype]
        if p.revision and not Path(self.weights).exists():
            cmd += ["--revision", p.revision]
        if p.max_model_len:
            cmd += ["--max-model-len", str(p.max_model_len)]
        if self.resolved_device() == "gpu":
            cmd += ["--tensor-parallel-size", str(p.tensor_parallel_size),
                    "--gpu-memory-utilization", str(p.gpu_memory_utilization)]
        return cmd + list(p.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.resolved_device() == "gpu":
            if self.gpu_ids is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpu_ids))
        else:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kv_cache_gib))
        if Path(self.weights).exists():
            env["HF_HUB_OFFLINE"] = "1"
        return env

    def start(self) -> None:
        if self.port is None:
            self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.environment(),
                                            start_new_session=True, preexec_fn=_terminate_with_parent)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerStartError(f"vLLM server for '{self.profile.name}' exited (code {code}) before it "
                                       f"was ready; log {self.log_path}:\n{log_tail(self.log_path)}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"vLLM server for '{self.profile.name}' was not ready within "
                               f"{self.startup_timeout:.0f} s; log {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period; waits until the group is gone."""
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + self.grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait()
        while _group_alive(pgid):
            time.sleep(0.1)
        self.process = None

    def __enter__(self) -> "VLLMServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate_with_parent() -> None:
    """Linux: the server gets SIGTERM if we die without stopping it (even by SIGKILL), so it never lingers."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Any process left in the group (zombies of our own child excepted: wait() reaps those)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False
