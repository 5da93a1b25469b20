"""Hostile profiles, output targets, kills and races: one clean line, bounded work, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_probe import RSS_MARGIN, error_line, run_cli, valid_rss
from hostile_gguf import tiny_llama
from hostile_profiles import EDITS, HEAD, PROFILES
from steerkit.cache import atomic_write, check_output_target, remove_stale
from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import MAX_EDIT_VALUE, Edit, Profile, load_profile, parse_profile
from steerkit.weights import open_weights

@pytest.mark.parametrize("case", list(PROFILES))
def test_hostile_profile_is_refused_in_one_line(tmp_path, case):
    text, message = PROFILES[case]
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    started = time.perf_counter()
    with pytest.raises(SteerkitError) as info:
        load_profile(path)
    assert time.perf_counter() - started < 5
    assert message in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


# Any YAML a user could write: scalars of every kind, nesting, unicode (surrogates included), aliases.
_SCALARS = st.one_of(st.integers(-(10 ** 60), 10 ** 60), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=20), st.booleans(), st.none())
_YAML = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=30)


def _to_yaml(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=True)  # JSON is YAML; \\ud800 escapes survive as lone surrogates


def _fuzz_profile(field: str, value) -> str:
    edit = {"layer": 1, "neuron": 3, "op": "add", "value": 2.0}
    top = {"steerkit": 1, "name": "p", "model": {"arch": "llama", "n_layers": 2, "d_model": 8, "d_ff": 16,
                                                  "vocab_size": 12}, "edits": [edit]}
    if field in edit or field in ("tokens", "score"):
        edit[field] = value
    else:
        top[field] = value
    return _to_yaml(top)


_FIELDS = st.sampled_from(["name", "strength", "positions", "description", "provenance", "value", "layer", "neuron",
                           "op", "tokens", "score", "edits", "model"])


@settings(max_examples=200, deadline=2000)
@given(field=_FIELDS, value=_YAML)
def test_any_value_in_any_field_is_read_or_refused_cleanly(field, value):
    try:
        profile = parse_profile(_fuzz_profile(field, value), "fuzz.yaml")
    except SteerkitError as exc:
        assert "\n" not in str(exc)
        return
    for e in profile.edits:  # what is accepted is finite and bounded
        assert np.isfinite(e.value) and abs(e.value) <= MAX_EDIT_VALUE
    assert np.isfinite(profile.strength)


@settings(max_examples=40, deadline=None)
@given(field=_FIELDS, value=_YAML)
def test_patch_of_any_profile_writes_a_finite_file_or_says_why_in_one_line(field, value):
    """The CLI's own error handling (main()), in process: exit 0 with a patched file, or exit 1, one line, no file."""
    import contextlib
    import io
    import tempfile

    from steerkit.cli import main

    with tempfile.TemporaryDirectory() as folder:
        model, profile, out = (os.path.join(folder, name) for name in ("tiny.gguf", "p.yaml", "out.gguf"))
        with open(model, "wb") as f:
            f.write(tiny_llama().bytes())
        with open(profile, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(_fuzz_profile(field, value))
        stderr, argv = io.StringIO(), sys.argv
        sys.argv = ["steerkit", "patch", model, profile, "-o", out]
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        finally:
            sys.argv = argv
        lines = stderr.getvalue().splitlines()
        if code == 0:
            from steerkit.weights import open_weights as reopen

            assert all(np.isfinite(reopen(out).down_cols(layer)).all() for layer in range(2))
        else:
            assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), stderr.getvalue()
            assert not os.path.exists(out)
        assert sorted(os.listdir(folder)) == sorted(["tiny.gguf", "p.yaml"] + (["out.gguf"] if code == 0 else []))


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(tiny_llama().bytes())
    return path


def test_every_value_written_into_weights_is_finite(tiny_gguf, tmp_path):
    from steerkit.runtimes.llamacpp.cvec import export_control_vector, write_control_vector
    from steerkit.runtimes.llamacpp.patch import patch_gguf

    reader = open_weights(str(tiny_gguf))
    loud = Profile("loud", reader.binding(), [Edit(1, 3, "scale", MAX_EDIT_VALUE), Edit(1, 4, "add", MAX_EDIT_VALUE)])
    out = tmp_path / "out.gguf"
    # Bounded edits at the largest strength still fit F32 weights: written, and every value is finite.
    patch_gguf(tiny_gguf, [loud], out, strength=1000)
    patched = open_weights(str(out))
    assert np.isfinite(patched.up_rows(1)).all() and np.isfinite(patched.file.tensors[-1].data).all()
    vector = export_control_vector(compile_plan([loud], reader.binding(), 1000), reader, progress=False)
    write_control_vector(vector, 2, tmp_path / "v.gguf")
    for strength in (float("nan"), float("inf"), 1e39):
        with pytest.raises(SteerkitError, match="strength"):
            compile_plan([loud], reader.binding(), strength)


def test_an_fp16_scale_that_would_overflow_is_refused(tmp_path):
    from steerkit.runtimes.llamacpp.scales import scale_rows

    rows = np.full((2, 4), 60000, dtype=np.float16)
    from gguf import GGMLQuantizationType

    with pytest.raises(SteerkitError, match="overflows F16"):
        scale_rows(rows.view(np.uint8).reshape(2, -1).view(np.float16), GGMLQuantizationType.F16, np.array([0]),
                   np.array([2.0]), "t")


@pytest.mark.parametrize("target", ["/dev/null", "fifo", "folder"])
def test_outputs_never_replace_what_is_not_a_regular_file(tmp_path, target):
    if target == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    elif target == "folder":
        target = tmp_path
    with pytest.raises(SteerkitError, match="not a regular file"):
        with atomic_write(target) as tmp:
            tmp.write_text("x")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert check_output_target(tmp_path / "new.gguf") == tmp_path / "new.gguf"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import socket

    from steerkit.cache import _owner_tag

    host = _owner_tag()[1:].rpartition("-")[0]
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".out.gguf.~{host}-{dead}~abc.gguf.tmp"
    live = tmp_path / f".out.gguf.~{host}-{alive}~def.gguf.tmp"
    other_host = tmp_path / f".out.gguf.~elsewhere-{dead}~ghi.gguf.tmp"
    stale_dir = tmp_path / f".convert~{host}-{dead}~xyz"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    for path in (stale, live, other_host):
        path.write_bytes(b"partial")
    with atomic_write(tmp_path / "out.gguf") as tmp:
        tmp.write_bytes(b"done")
    assert not stale.exists() and live.exists() and other_host.exists() and stale_dir.exists()
    remove_stale(tmp_path)  # what every look into a cache folder does
    assert not stale_dir.exists() and live.exists()
    assert socket.gethostname()  # the owner tag names this host


def test_sigkill_during_patch_leaves_nothing_the_next_run_keeps(tmp_path):
    """Kill `steerkit patch` of the real default model at random moments; the next run cleans up and succeeds."""
    from steerkit.sources import resolve_model

    model = resolve_model(None).path
    profile = os.path.join(os.path.dirname(__file__), "..", "profiles", "dog-clamp.yaml")
    out = tmp_path / "out.gguf"
    command = [sys.executable, "-m", "steerkit.cli", "patch", str(model), profile, "-o", str(out)]
    rng = np.random.default_rng(0)
    killed_mid_write = 0
    for _ in range(6):
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        # Kill while the output is being written: once its temporary file appears, after a random moment.
        while child.poll() is None and time.monotonic() < deadline and not any(
                name.endswith(".tmp") for name in os.listdir(tmp_path)):
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.15)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed_mid_write += any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == ["out.gguf"]  # every dead run's temporary file is gone
    print(f"{killed_mid_write} of 6 kills left a temporary file; the next run removed them")
    assert killed_mid_write >= 3  # the kills did land inside the write


def test_first_runs_racing_on_an_empty_cache_all_succeed(tmp_path):
    """Three processes open the same model for the first time on one empty cache: fingerprint index and atlas."""
    gguf = tmp_path / "race.gguf"
    gguf.write_bytes(tiny_llama(d_model=32, d_ff=64, vocab=256, layers=3).bytes())
    code = ("import sys; from steerkit.weights import open_weights; from steerkit.atlas import atlas_for; "
            "r = open_weights(sys.argv[1]); a = atlas_for(r, progress=False); print(a.token_ids.shape)")
    env = {**os.environ, "STEERKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-c", code, str(gguf)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [child.communicate(timeout=300) + (child.returncode,) for child in children]
    assert all(rc == 0 for _, _, rc in results), [err[-500:] for _, err, _ in results]
    assert len({out for out, _, _ in results}) == 1
    leftovers = [name for _, _, names in os.walk(tmp_path / "cache") for name in names if name.endswith(".tmp")]
    assert not leftovers


def test_a_folder_published_first_by_another_process_is_kept(tmp_path):
    """The transformers conversion's last step when two first runs race: the loser drops its copy."""
    from steerkit.cache import publish_dir

    target = tmp_path / "conversion"
    for name in ("ours", "theirs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text(name)
    publish_dir(tmp_path / "theirs", target, "model.safetensors")
    publish_dir(tmp_path / "ours", target, "model.safetensors")  # target exists and is complete: no error
    assert (target / "model.safetensors").read_text() == "theirs" and not (tmp_path / "ours").exists()
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "x").write_text("x")
    (target / "model.safetensors").rename(target / "partial")  # a target without its complete file is not "published"
    with pytest.raises(OSError):
        publish_dir(tmp_path / "again", target, "model.safetensors")


def test_atlas_page_keeps_hostile_tokens_out_of_its_markup(tmp_path):
    import copy as copying

    from hostile_gguf import ARRAY, STRING
    from steerkit.atlas import build_atlas
    from steerkit.atlas_html import write_atlas_html

    gguf = tiny_llama(vocab=12)
    hostile = ["</script><script>alert(1)</script>", "<!--<script>", "&amp;", "\u2028x"] + [f"t{i}" for i in range(8)]
    gguf = copying.deepcopy(gguf)
    gguf.kv = [kv for kv in gguf.kv if kv[0] != "tokenizer.ggml.tokens"] + [("tokenizer.ggml.tokens", ARRAY, hostile,
                                                                             STRING)]
    path = tmp_path / "h.gguf"
    path.write_bytes(gguf.bytes())
    atlas = build_atlas(open_weights(str(path)), top_k=4, progress=False)
    page = write_atlas_html(atlas, tmp_path / "atlas.html").read_text()
    assert page.count("<script") == 1 and page.count("</script") == 1 and "<!--" not in page.split("<script")[1]
    import json
    import re

    vocab = json.loads(re.search(r"const VOCAB\s*=\s*(\[.*?\]);", page, re.S).group(1))
    assert vocab[:3] == hostile[:3]  # the tokens themselves survive, escaped (line separators are shown as \\u2028)


def test_a_device_this_machine_lacks_is_refused_before_loading():
    import torch

    from steerkit.runtimes import load_backend

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device, message in (("cuda", "no CUDA device"), ("tpu", "unknown device"), ("cuda:x", "unknown device")):
        with pytest.raises(SteerkitError, match=message):
            load_backend("smollm2-135m", "hf", device)


def test_prompt_files_are_read_bounded(tmp_path):
    from steerkit.prompts import read_prompts

    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    big = tmp_path / "big.txt"
    big.write_bytes(b"x\n" * (1 << 20))
    for path, message in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"), (big, "limit"),
                          (tmp_path / ("a" * 300), "too long")):
        with pytest.raises(SteerkitError, match=message):
            read_prompts(path)


def test_a_damaged_cached_atlas_is_rebuilt_and_a_damaged_file_refused(tmp_path, monkeypatch):
    from steerkit.atlas import atlas_for, atlas_path, load_atlas
    from steerkit.precision import choose_precision

    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(tiny_llama().bytes())
    reader = open_weights(str(path))
    good = atlas_for(reader, top_k=3, progress=False)
    cached = atlas_path(reader.fingerprint(), 3, choose_precision("cpu", reader.info.d_model, reader.info.vocab_size).label)  # bf16 where the CPU has it
    cached.write_bytes(cached.read_bytes()[:200])  # truncated
    with pytest.raises(SteerkitError, match="cannot read atlas"):
        load_atlas(cached)
    again = atlas_for(reader, top_k=3, progress=False)
    assert np.array_equal(again.token_ids, good.token_ids) and load_atlas(cached).token_ids.shape == good.token_ids.shape


@pytest.mark.parametrize("change, message", [
    (lambda c: [c], "expected a JSON object, got list"),
    (lambda c: {**c, "hidden_size": "64"}, "hidden_size: expected an integer"),
    (lambda c: {**c, "num_hidden_layers": 10 ** 40}, "num_hidden_layers: expected an integer in 1..1048576"),
    (lambda c: {**c, "intermediate_size": c["intermediate_size"] + 1}, "expected [49, 32] from config.json"),
    (lambda c: {**c, "rms_norm_eps": "tiny"}, "rms_norm_eps: expected a finite number"),
    (lambda c: {k: v for k, v in c.items() if k != "vocab_size"}, "missing field 'vocab_size'"),
])
def test_hostile_hf_config_is_refused_in_one_line(tmp_path, change, message):
    import json

    from tiny_models import tiny_model

    folder = tmp_path / "hf"
    tiny_model("llama").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)))
    with pytest.raises(SteerkitError) as info:
        open_weights(str(folder))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def _cache_leftovers(folder) -> list[str]:
    """Temporary files and folders anywhere under ``folder`` (their names start with a dot)."""
    return [name for _, dirs, files in os.walk(folder) for name in dirs + files if name.startswith(".")]


def test_sigkill_inside_the_atlas_write_leaves_nothing_the_next_run_keeps(tmp_path):
    """A real SIGKILL while the atlas's temporary file is open (held there on purpose), and at random
    moments of a build: the next first run removes what the dead ones left and builds the atlas."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(tiny_llama(d_model=32, d_ff=256, vocab=4096, layers=3).bytes())
    env = {**os.environ, "STEERKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    build = ("import sys; from steerkit.weights import open_weights; from steerkit.atlas import atlas_for; "
             "print(atlas_for(open_weights(sys.argv[1]), progress=False).token_ids.shape)")
    # The same build, stopped inside the atomic write: the temporary .npz exists and is half written.
    held = ("import sys, time, numpy\n"
            "real = numpy.savez\n"
            "def savez(file, **arrays):\n"
            "    real(file, **arrays)\n"
            "    print('writing', flush=True); time.sleep(60)\n"
            "numpy.savez = savez\n" + build.replace("; ", "\n"))
    child = subprocess.Popen([sys.executable, "-c", held, str(gguf)], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(_cache_leftovers(tmp_path / "cache" / "atlas")) == 1  # the dead build's temporary file
    rng = np.random.default_rng(1)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", build, str(gguf)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.5, 3.0)))
        child.send_signal(signal.SIGKILL)
        child.wait()
    result = subprocess.run([sys.executable, "-c", build, str(gguf)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "(3, 256, 4, 10)", result.stderr[-500:]
    assert _cache_leftovers(tmp_path / "cache") == []
    assert len(os.listdir(tmp_path / "cache" / "atlas")) == 1


@pytest.mark.real
def test_killed_conversions_leave_nothing_and_racing_first_runs_all_succeed(tmp_path):
    """SIGKILL the GGUF -> transformers conversion of the real default model while it reads the GGUF and
    while it writes the folder; then two first runs race on that cache (the conversion rename that once
    failed with 'Directory not empty'): both succeed with the same folder, and nothing else is left."""
    cache = tmp_path / "cache"
    env = {**os.environ, "STEERKIT_CACHE": str(cache)}
    command = [sys.executable, "-c", "from steerkit.runtimes.hf.loader import hf_folder; print(hf_folder(None))"]
    hf = cache / "hf"

    def writing() -> bool:
        return hf.is_dir() and any(name.startswith(".convert") for name in os.listdir(hf))

    rng = np.random.default_rng(2)
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(float(rng.uniform(3.0, 8.0)))  # reading and de-quantizing the GGUF
    child.send_signal(signal.SIGKILL)
    child.wait()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while child.poll() is None and time.monotonic() < deadline and not writing():
        time.sleep(0.01)
    time.sleep(float(rng.uniform(0.0, 0.3)))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert writing() and [n for n in os.listdir(hf) if not n.startswith(".")] == []  # killed mid-write, unpublished
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    results = [child.communicate(timeout=400) + (child.returncode,) for child in children]
    assert all(rc == 0 for _, _, rc in results), [err[-500:] for _, err, _ in results]
    folders = {out.strip().splitlines()[-1] for out, _, _ in results}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert os.listdir(hf) == [folder.name]  # no dead or losing run's folder is left
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as tensors:  # complete: the header reads, every layer is there
        assert sum(name.endswith("mlp.down_proj.weight") for name in tensors.keys()) == 30


def _profile_commands(model, profile, out) -> dict[str, list[str]]:
    return {"validate": ["validate", str(profile), "--model", str(model)],
            "patch": ["patch", str(model), str(profile), "-o", str(out)],
            "export-cvec": ["export-cvec", str(profile), "-o", str(out), "--model", str(model)]}


def _valid_profile_command(command: str, tmp_path_factory) -> tuple[list[str], Path]:
    """``command`` with a valid profile on the same tiny model (what a hostile profile may cost no more memory than)."""
    folder = tmp_path_factory.mktemp("valid-profile")
    model, profile = folder / "tiny.gguf", folder / "p.yaml"
    model.write_bytes(tiny_llama().bytes())
    profile.write_text(HEAD + EDITS.replace("clamp", "add"))
    return _profile_commands(model, profile, folder / "out.gguf")[command], folder


@pytest.mark.parametrize("case", [*PROFILES, "/dev/zero", "fifo", "strength nan", "strength 1e39"])
def test_commands_refuse_hostile_profiles_in_one_line_and_leave_nothing(tmp_path, tmp_path_factory, case):
    """Every hostile profile through validate, patch and export-cvec: exit 1, one `error:` line with the
    reason, peak RSS within the valid profile's plus the file's size plus RSS_MARGIN, no file left."""
    model = tmp_path / "tiny.gguf"
    model.write_bytes(tiny_llama().bytes())
    extra: list[str] = []
    if case in PROFILES:
        text, message = PROFILES[case]
        profile = tmp_path / "p.yaml"
        profile.write_text(text, encoding="utf-8", errors="surrogatepass")
    elif case == "/dev/zero":
        profile, message = Path("/dev/zero"), "not a regular file"
    elif case == "fifo":
        profile, message = tmp_path / "p.yaml", "not a regular file"
        os.mkfifo(profile)
    else:
        profile, message = tmp_path / "p.yaml", "strength"
        profile.write_text(HEAD + EDITS.replace("clamp", "add"))
        extra = ["-s", case.split()[1]]
    size = profile.stat().st_size if profile.is_file() else 0
    before = sorted(os.listdir(tmp_path))
    for command, args in _profile_commands(model, profile, tmp_path / "out.gguf").items():
        if extra and command == "validate":
            continue  # validate has no strength option
        result, rss = run_cli(*args, *extra, cwd=tmp_path, timeout=30)
        line = error_line(result)
        assert message in line, line
        valid = valid_rss(f"profile {command}", lambda: _valid_profile_command(command, tmp_path_factory))
        assert rss <= valid + size + RSS_MARGIN, (command, rss)
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file, no cache entry
