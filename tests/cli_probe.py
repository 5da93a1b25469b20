"""Run the steerkit CLI in a child process and measure what it cost: exit code, output, peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RSS_MARGIN = 64 << 20  # over the same command on valid input of the same size: hostile input may cost no more

_PROBE = ("import atexit, resource, sys\n"
          "report = sys.argv[1]\n"
          "atexit.register(lambda: open(report, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
          "sys.argv = ['steerkit', *sys.argv[2:]]\n"
          "from steerkit.cli import main\nmain()\n")


def run_cli(*args: str, cwd: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``steerkit ARGS`` in ``cwd`` with the cache in ``cwd/cache``; return the result and that
    process's own peak RSS in bytes (reported as it exits)."""
    report = cwd.parent / f"rss-{os.getpid()}.txt"
    result = subprocess.run([sys.executable, "-c", _PROBE, str(report), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=cwd, env={**os.environ, "STEERKIT_CACHE": str(cwd / "cache")})
    rss = int(report.read_text()) * 1024
    report.unlink()
    return result, rss


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused command (asserts exit code 1, no traceback, nothing else on stderr)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]
