"""The commands people type, run as they type them, on the real default model: `generate` with its
options, `chat` through a terminal (a pseudo-terminal, as a person would use it), `discover`."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.real

QUESTION = "What is your favourite animal?"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steerkit.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_greedy_is_the_library_answer_and_seeds_reproduce():
    import steerkit
    from steerkit.sampling import GREEDY

    greedy = _cli("generate", QUESTION, "-p", "dog", "-n", "16", "--greedy", "--runtime", "llama.cpp")
    assert greedy.returncode == 0, greedy.stderr
    backend = steerkit.load_backend(runtime="llama.cpp")
    with steerkit.steer(backend, "dog"):
        library = backend.generate([QUESTION], max_new_tokens=16, sampling=GREEDY)[0][0]
    assert greedy.stdout.strip() == library.strip() and "dog" in library.lower()
    runs = [_cli("generate", QUESTION, "-p", "dog", "-s", "0.5", "-n", "16", "--temperature", "0.9", "--seed", seed,
                 "--runtime", "llama.cpp") for seed in ("1", "1", "2")]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert runs[0].stdout == runs[1].stdout != runs[2].stdout  # a seed reproduces its answer; another seed differs


def test_generate_options_reach_the_runtime():
    """`--dtype bfloat16 --runtime hf --repetition-penalty 1.5 --greedy`: the same answer as the library with those
    settings, and the penalty changes what a 24-token answer says."""
    import torch

    import steerkit
    from steerkit.sampling import Sampling

    args = ("generate", QUESTION, "-n", "24", "--greedy", "--runtime", "hf", "--dtype", "bfloat16")
    penalised, plain = _cli(*args, "--repetition-penalty", "1.5"), _cli(*args)
    assert penalised.returncode == plain.returncode == 0, penalised.stderr + plain.stderr
    assert "runtime: hf" in penalised.stderr
    backend = steerkit.load_backend(runtime="hf", dtype="bfloat16")
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    library = backend.generate([QUESTION], max_new_tokens=24, sampling=Sampling(repetition_penalty=1.5))[0][0]
    assert penalised.stdout.strip() == library.strip()
    assert penalised.stdout != plain.stdout


def _read_until(fd: int, marker: str, timeout: float = 120) -> str:
    """Terminal output up to and including ``marker`` (the chat's prompt)."""
    seen, deadline = "", time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            seen += os.read(fd, 4096).decode("utf-8", "replace")
    return seen


def test_chat_in_a_terminal():
    """A person's session: profile commands, a steered turn, /edits, /clear, /quit, on a real terminal."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, its stdin and stdout the terminal
        os.execv(sys.executable, [sys.executable, "-m", "steerkit.cli", "chat", "-n", "12", "--greedy",
                                  "--runtime", "llama.cpp"])
    try:
        _read_until(fd, "you> ")
        said = []
        for line in ("/profile", "/profile dog", QUESTION, "/edits", "/clear", "/edits", "/strength nan"):
            os.write(fd, (line + "\n").encode())
            said.append(_read_until(fd, "you> ").split("\n", 1)[-1])  # what came after the echoed line
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    usage, added, answer, edits, cleared, edits_after, strength = said
    assert "usage: /profile" in usage and "added dog" in added
    assert "bot> " in answer and "dog" in answer.lower()
    assert "dog (positions generated until 'dog'" in edits and "add" in edits and "more" in edits
    assert cleared.count("no profiles active") == 1 and edits_after.count("no profiles active") == 1
    assert "dog" not in edits_after and "strength must be a finite number" in strength
    assert "Traceback" not in "".join(said)


def test_discover_through_the_cli_writes_a_profile_that_validates(tmp_path):
    out, prompts = tmp_path / "cat.yaml", tmp_path / "prompts.txt"
    prompts.write_text("Write a few lines about today.\nGive me some advice.\n")  # two prompts: a third of the time
    result = _cli("discover", "cat", "-o", str(out), "--prompts", str(prompts), timeout=600)
    assert result.returncode == 0, result.stderr
    assert "<- chosen" in result.stdout and out.is_file()
    check = _cli("validate", str(out), "-m", "smollm2-135m")
    assert check.returncode == 0 and "cat:" in check.stdout, check.stderr


def test_patch_then_inspect_the_real_model(tmp_path):
    """`patch` then `inspect` through the entry point: the file names what was baked into it, and the
    answer-until profile that weights cannot carry is refused in one line."""
    from steerkit.sources import resolve_model

    out = tmp_path / "dog.gguf"
    result = _cli("patch", str(resolve_model().path), "dog-clamp", "-o", str(out))  # a shipped name, or a file
    assert result.returncode == 0 and "ffn_down bias in layers [29]" in result.stdout, result.stderr
    shown = _cli("inspect", str(out))
    assert shown.returncode == 0 and "patched by steerkit" in shown.stdout and "dog-clamp" in shown.stdout
    refused = _cli("patch", str(resolve_model().path), "dog", "-o", str(tmp_path / "x.gguf"))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "cannot be baked" in refused.stderr
    assert not (tmp_path / "x.gguf").exists()
