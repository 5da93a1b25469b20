"""An installed wheel works on its own: built, installed into a fresh venv, run from an unrelated directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _source_copy(target: Path) -> Path:
    """The checkout's files (tracked, or new and not ignored), so no stale build/ folder leaks into the wheel."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def test_wheel_installs_and_runs_the_main_job(tmp_path):
    wheels = tmp_path / "wheels"
    source = _source_copy(tmp_path / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("steerkit-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "steerkit/runtimes/llamacpp/backend.py" in names and "steerkit/profiles/dog.yaml" in names
    assert "steerkit/data/reference.txt" in names and "steerkit/profiles/prompts/music.txt" in names
    assert "steerkit/data/playground.html" in names and "steerkit/serving/app.py" in names
    assert not [n for n in names if n.startswith(("runtimes/", "profiles/", "tests/"))]
    # Every module of the checkout is in the wheel (the package list in pyproject.toml is explicit).
    sources = {f"steerkit/{p.relative_to(ROOT / 'steerkit')}" for p in (ROOT / "steerkit").rglob("*.py")}
    sources |= {f"steerkit/runtimes/{p.relative_to(ROOT / 'runtimes')}" for p in (ROOT / "runtimes").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))

    # A fresh venv: the wheel installed alone, the dependencies seen through a path entry
    # (no .pth of this environment is processed there, so the editable checkout stays invisible).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import steerkit.shipped as s, steerkit; print(steerkit.__file__); "
                            "print(s.shipped_dir()); import importlib.util; print(importlib.util.find_spec('runtimes'))"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert where.returncode == 0, where.stderr
    package, shipped, bare = where.stdout.split("\n")[:3]
    assert package.startswith(str(site)) and shipped.startswith(str(site)) and bare == "None", where.stdout
    steer = subprocess.run([str(python), "-m", "steerkit.cli", "steer", "dog", "What is your favourite animal?",
                            "-n", "24", "--greedy"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert steer.returncode == 0, steer.stderr
    assert "(shipped)" in steer.stdout and "dog" in steer.stdout.lower().split("steered: dog", 1)[1], steer.stdout
