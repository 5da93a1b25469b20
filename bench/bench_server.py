"""`steerkit serve` under load, against llama-cpp-python's own server on the same requests.

8 concurrent clients x 25 requests (official openai client, greedy, mixed profiles and strengths
through the model name), then every distinct request again alone: errors, answers that differ from
the same request served alone, requests/s, tokens/s and p50/p95 latency.  Then the same requests,
unsteered, against ``python -m llama_cpp.server`` on the same model file.  The two servers never
run at the same time (llama.cpp threads busy-wait).

    python bench/bench_server.py [--clients 8] [--requests 25] [--tokens 32] [--runtime auto]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from openai import OpenAI

from steerkit.prompts import builtin_prompts
from steerkit.sources import resolve_model

MODELS = ["smollm2-135m", "smollm2-135m+dog", "smollm2-135m+cat@0.5", "smollm2-135m+dog-clamp",
          "smollm2-135m+dog+no-music", "smollm2-135m+teacher@1.5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    log = tempfile.TemporaryFile()  # not a pipe: llama.cpp's load log would fill it and block the server
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return process
        except OSError:
            if process.poll() is not None:
                log.seek(0)
                raise SystemExit(f"server failed to start: {log.read()[-2000:].decode(errors='replace')}")
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not start in 120 s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def load(port: int, requests: list[tuple[str, str]], clients: int, tokens: int) -> dict:
    """Send ``requests`` from ``clients`` threads (each takes every clients-th request); time everything."""
    results: list[tuple[int, str | None, float, int]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        api = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        for k in range(index, len(requests), clients):
            model, prompt = requests[k]
            started = time.perf_counter()
            try:
                answer = api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=tokens, temperature=0)
                text, used = answer.choices[0].message.content, answer.usage.completion_tokens
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error here
                text, used = None, 0
                print(f"  error on {model}: {exc}", file=sys.stderr)
            with lock:
                results.append((k, text, time.perf_counter() - started, used))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies = sorted(r[2] for r in results)
    return {"wall_s": round(wall, 2), "errors": sum(r[1] is None for r in results),
            "requests_per_s": round(len(results) / wall, 3),
            "tokens_per_s": round(sum(r[3] for r in results) / wall, 1),
            "p50_s": round(latencies[len(latencies) // 2], 2),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
            "answers": {r[0]: r[1] for r in results}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    prompts = builtin_prompts("neutral")
    total = args.clients * args.requests
    requests = [(MODELS[k % len(MODELS)], prompts[(k // len(MODELS)) % len(prompts)]) for k in range(total)]
    figures = {}

    port = free_port()
    server = start([sys.executable, "-m", "steerkit.cli", "serve", "--port", str(port), "--runtime", args.runtime,
                    "--max-queue", str(args.clients + 1)], port)
    try:
        load(port, requests[: len(MODELS)], 1, 4)  # warm-up: patched copies made, models loaded once
        steerkit = load(port, requests, args.clients, args.tokens)
        alone = {}
        for key in sorted(set(requests)):
            alone[key] = load(port, [key], 1, args.tokens)["answers"][0]
        differ = sum(steerkit["answers"][k] != alone[requests[k]] for k in range(total))
        steerkit["differ_from_alone"] = differ
    finally:
        stop(server)
    figures["steerkit serve"] = steerkit

    port = free_port()
    threads = str(os.cpu_count())
    reference = start([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model().path), "--host",
                       "127.0.0.1", "--port", str(port), "--n_threads", threads, "--n_ctx", "2048"], port)
    try:
        load(port, requests[:2], 1, 4)
        figures["llama_cpp.server (unsteered)"] = load(port, [("smollm2-135m", p) for _, p in requests],
                                                        args.clients, args.tokens)
    finally:
        stop(reference)

    print(f"{args.clients} clients x {args.requests} requests, {args.tokens} tokens max, greedy, models {MODELS}")
    print(f"{'server':32s} errors  differ  req/s   tok/s   p50 s   p95 s")
    for name, row in figures.items():
        print(f"{name:32s} {row['errors']:6d}  {str(row.get('differ_from_alone', '-')):>6s}  "
              f"{row['requests_per_s']:5.2f}  {row['tokens_per_s']:6.1f}  {row['p50_s']:6.2f}  {row['p95_s']:6.2f}")
    ratio = figures["steerkit serve"]["requests_per_s"] / figures["llama_cpp.server (unsteered)"]["requests_per_s"]
    print(f"throughput ratio (requests/s) steerkit / llama_cpp.server: {ratio:.2f}")
    if args.output:
        for row in figures.values():
            row.pop("answers")
        with open(args.output, "w") as handle:
            json.dump({"figures": figures, "ratio": ratio}, handle, indent=1)


if __name__ == "__main__":
    main()
