"""Run the steerkit CLI in a child process and measure what it cost: exit code, output, peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
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


_VALID_RSS: dict[str, int] = {}


def valid_rss(key: str, prepare: Callable[[], tuple[list[str], Path]]) -> int:
    """Peak RSS of a command on valid input, the yardstick for the same command on hostile input: measured
    once per session for each ``key`` (same interpreter, same imports).  ``prepare`` writes the valid input
    and returns the arguments and the folder to run in; the command must succeed there."""
    if key not in _VALID_RSS:
        args, folder = prepare()
        result, rss = run_cli(*args, cwd=folder)
        assert result.returncode == 0, result.stderr
        _VALID_RSS[key] = rss
    return _VALID_RSS[key]
