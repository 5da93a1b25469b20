"""The serving recipes: an OpenAI-compatible server on loopback serving a patched GGUF.

llama-cpp-python's server always runs; llama.cpp's own ``llama-server`` runs where it is installed
(on PATH, or named by ``$STEERKIT_LLAMA_SERVER``) and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from steerkit.runtimes.llamacpp import patch_gguf
from steerkit.profile import load_profile
from steerkit.shipped import shipped_profile
from steerkit.sources import resolve_model

pytestmark = pytest.mark.real


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(kind: str, model, port: int) -> list[str]:
    if kind == "llama-cpp-python":
        pytest.importorskip("uvicorn")
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                "--port", str(port), "--n_ctx", "512"]
    binary = os.environ.get("STEERKIT_LLAMA_SERVER") or shutil.which("llama-server")
    if not binary:
        pytest.skip("llama-server is not installed (set STEERKIT_LLAMA_SERVER to its path)")
    return [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "512"]


@pytest.mark.parametrize("kind", ["llama-cpp-python", "llama-server"])
def test_server_answers_with_the_steered_model(kind, tmp_path):
    model = tmp_path / "dog.gguf"
    port = free_port()
    command = server_command(kind, model, port)
    patch_gguf(resolve_model().path, [load_profile(shipped_profile("dog-clamp"))], model, progress=False)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):  # bounded wait for the server to come up (llama-server answers 503 while loading)
            try:
                urllib.request.urlopen(f"{base}/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not start within 60 s")
        body = json.dumps({"messages": [{"role": "user", "content": "What is your favourite animal?"}],
                           "max_tokens": 20, "temperature": 0}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", body, {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["message"]["content"]
        assert "dog" in answer.lower(), answer
    finally:
        server.terminate()
        server.wait(timeout=30)
