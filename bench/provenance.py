"""Where a measurement came from, and how result files are written.

Shared by ``bench/run.py``, ``bench/montecarlo.py`` and ``bench/collect.py``: every committed
result file under ``bench/results/`` carries a ``provenance`` record (date, machine, library
versions, git commit, command line) and is written atomically (a temporary file in the same
folder, then a rename), so an interrupted write never leaves a half file behind.
"""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "brevitas", "onnxruntime", "numba", "numpy")


def git_commit(root: Path = ROOT) -> dict:
    """The checked-out commit and whether the working tree had uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine(threads: int | None = None) -> dict:
    """Cores, CPU model, memory, the thread count the measurement used, library versions."""
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "platform": platform.platform(),
        "versions": versions,
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, with OMP_NUM_THREADS in front when it was set."""
    argv = sys.argv if argv is None else argv
    parts = [Path(sys.executable).name, *argv]
    if os.environ.get("OMP_NUM_THREADS"):
        parts.insert(0, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    return shlex.join(parts)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def provenance(threads: int | None = None, argv: list[str] | None = None) -> dict:
    return {
        "date": now(),
        **git_commit(),
        "command": command_line(argv),
        "machine": machine(threads),
    }


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON: temporary file beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
