"""Helpers shared by the benchmark scripts: machine description, tables, peak memory."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from typing import Dict, List, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def machine() -> str:
    """One line naming the CPU, core count, memory, GPU and library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fin:
            for line in fin:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fin:
            memory = f", {int(fin.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores{memory}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def markdown_table(rows: List[Dict[str, object]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(f"{value:,.2f}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reset_peak_rss() -> None:
    """Reset this process's peak resident memory (``VmHWM``) by writing 5 to /proc/self/clear_refs (Linux).

    :func:`peak_rss_mib` then covers only what runs after this call.
    """
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fout:
        fout.write("5")


def peak_rss_mib() -> float:
    """Return this process's peak resident memory in MiB since the last :func:`reset_peak_rss` (``VmHWM``).

    Without ``/proc`` it falls back to ``ru_maxrss``, which the reset does not clear.
    """
    with open("/proc/self/status", encoding="ascii") as fin:
        for line in fin:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(argv: List[str]) -> str:
    """Run a benchmark step in a fresh Python process (for peak-memory figures); return its stdout."""
    result = subprocess.run([sys.executable] + argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return result.stdout
