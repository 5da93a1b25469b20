"""The CLI: commands work on tiny models, and bad input ends in one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tiny_models import save_gguf, tiny_model


def run_cli(*args: str, env_cache=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steerkit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def gguf(tmp_path):
    return str(save_gguf(tiny_model("llama"), tmp_path / "m.gguf"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["neuron", "1:999"], "out of range"),
        (["neuron", "dog"], "expected LAYER:INDEX"),
        (["find", "zebra"], "not a single token"),
        (["find", ""], "empty"),
        (["map", "--side", "up"], "--side"),
        (["map", "--top-k", "0"], "top-k"),
        (["discover", ""], "empty"),
        (["discover", "  "], "empty"),
        (["discover", "zebra"], "absent from this model's vocabulary"),
        (["discover", "one two three four five"], "up to 4 words"),
        (["discover", "x" * 10000], "at most 64 characters"),
        (["discover", "dog", "--prompts", "missing.txt"], "cannot read prompts"),
        (["eval", "nope.yaml"], "cannot read profile"),
        (["steer", "", "hi"], "empty"),
        (["steer", "../../etc/passwd", "hi"], "expected a word or a phrase"),
        (["generate", "hi", "-n", "0"], "max tokens must be an integer in 1..4096"),
        (["generate", "hi", "-t", "-1"], "temperature must be a number"),
        (["generate", "hi", "-s", "nan"], "strength must be a finite number"),
        (["generate", "hi", "-s", "1e39"], "strength must be a finite number"),
        (["generate", "hi", "-r", "onnx"], "unknown runtime 'onnx'"),
        (["chat", "-n", "0"], "max tokens"),
        (["neuron", "1:" + "9" * 5000], "expected LAYER:INDEX"),
        (["serve", "--host", "0.0.0.0"], "needs --api-key"),
        (["serve", "--host", "example.org", "--api-key", "k"], "expected an IP address"),
        (["serve", "--max-queue", "0"], "--max-queue"),
        (["serve", "--max-loaded", "0"], "--max-loaded must be 1..64"),
        (["serve", "--profiles", "no-such-folder"], "--profiles no-such-folder: not a folder"),
        (["generate", "hi", "--dtype", "float8"], "dtype 'float8': expected one of float32"),
        (["generate", "hi", "--dtype", "bf16", "-r", "llama.cpp"], "llama.cpp: cannot cast the weights"),
        (["generate", "hi", "--repetition-penalty", "0"], "repetition_penalty must be a number in [1, 100]"),
        (["chat", "--repetition-penalty", "101"], "repetition_penalty must be a number in [1, 100]"),
        (["steer", "dog", "hi", "--repetition-penalty", "nan"], "repetition_penalty must be a number in [1, 100]"),
        (["discover", "dog", "--positions", "some"], "--positions: expected until, prompt, all"),
    ],
)
def test_bad_input_is_one_line(gguf, args, message):
    result = run_cli(*args, "--model", gguf)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1] and message in errors[0], result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("args", [["generate", "hi"], ["chat"], ["eval", "PROFILE"], ["serve"], ["map", "-o", "a.npz"]])
def test_device_cuda_without_a_gpu_is_one_line(gguf, args, tmp_path):
    from steerkit.profile import Edit, Profile, save_profile
    from test_gguf_patch import binding_of

    save_profile(Profile("dog", binding_of(gguf), [Edit(1, 5, "add", 2.0)]), tmp_path / "p.yaml")
    args = [str(tmp_path / "p.yaml") if arg == "PROFILE" else arg for arg in args]
    result = subprocess.run([sys.executable, "-m", "steerkit.cli", *args, "--device", "cuda", "--model", gguf],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "no CUDA device is available" in lines[0], result.stderr


def test_eval_counts_the_concept_it_is_given(gguf, tmp_path):
    """`eval --concept WORD` scores WORD instead of the profile's own concept: a word the model lacks is refused."""
    from steerkit.profile import Edit, Profile, save_profile
    from test_gguf_patch import binding_of

    save_profile(Profile("dog", binding_of(gguf), [Edit(1, 5, "add", 2.0)]), tmp_path / "p.yaml")
    result = run_cli("eval", str(tmp_path / "p.yaml"), "--concept", "zebra", "--model", gguf, "-o", str(tmp_path / "e.json"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and lines == [lines[-1]] and "concept 'zebra' is absent" in lines[-1], result.stderr
    assert not (tmp_path / "e.json").exists()


def test_patch_checks_its_strength_before_reading_anything(gguf, tmp_path):
    result = run_cli("patch", gguf, "missing.yaml", "-o", str(tmp_path / "out.gguf"), "-s", "inf")
    assert result.returncode == 1 and result.stderr.startswith("error: strength must be a finite number"), result.stderr
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_model_is_one_line():
    result = run_cli("neuron", "0:0", "--model", "gpt-9")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "unknown model 'gpt-9'" in result.stderr


def test_map_neuron_find_compare(gguf, tmp_path):
    html = tmp_path / "atlas.html"
    result = run_cli("map", "--model", gguf, "--html", str(html), "-o", str(tmp_path / "atlas.npz"))
    assert result.returncode == 0, result.stderr
    assert "3 layers x 48 neurons" in result.stdout and html.is_file() and (tmp_path / "atlas.npz").is_file()
    result = run_cli("neuron", "2:5", "--model", gguf)
    assert result.returncode == 0 and "read+" in result.stdout and "write-" in result.stdout
    result = run_cli("find", "dog", "--model", gguf)
    import re

    firsts = [re.search(r"p=\S+\s+'([^']*)'", line).group(1) for line in result.stdout.splitlines()
              if line.strip()[:1].isdigit()]
    assert result.returncode == 0 and len(firsts) >= 5
    # Every neuron found decodes to a form of the word first.
    assert all(first.strip().lower().startswith("dog") for first in firsts), result.stdout
    result = run_cli("compare", gguf, gguf)
    assert result.returncode == 0 and "read+   100.0%" in result.stdout


def test_compare_refuses_models_it_cannot_compare_in_one_line(gguf, tmp_path):
    wider = str(save_gguf(tiny_model("llama", intermediate_size=64), tmp_path / "wider.gguf"))
    for args, message in (((gguf, wider), "has 3x48 neurons, "), ((gguf, str(tmp_path / "none.gguf")), "none.gguf")):
        result = run_cli("compare", *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr and (message != "has 3x48 neurons, " or "has 3x64" in lines[0])


def test_find_before_the_atlas_lists_what_it_lists_after(gguf):
    """No atlas cached: `find` estimates, decodes its best candidates exactly, and says so; then `map`."""
    before = run_cli("find", "dog", "--model", gguf, "-n", "5")
    assert before.returncode == 0 and "no atlas" in before.stderr and "exactly" in before.stderr
    assert "screening" in before.stderr and "0/6" in before.stderr  # a bar over the matrices (3 layers x 2 sides)
    assert run_cli("map", "--model", gguf).returncode == 0
    after = run_cli("find", "dog", "--model", gguf, "-n", "5")
    assert after.returncode == 0 and "no atlas" not in after.stderr
    neurons = lambda out: [line.split()[0] for line in out.splitlines() if line.strip()[:1].isdigit()]  # noqa: E731
    assert neurons(before.stdout) == neurons(after.stdout) and len(neurons(after.stdout)) == 5


def test_neuron_shows_a_planted_neuron_writing_its_word(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        dog = model.model.embed_tokens.weight[[0, 1, 2, 3]].sum(0)  # the tiny vocabulary's four dog tokens
        model.model.layers[2].mlp.down_proj.weight[:, 7] = 10 * dog / dog.norm()
    path = str(save_gguf(model, tmp_path / "planted.gguf"))
    result = run_cli("neuron", "2:7", "--model", path)
    views = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip().startswith(("read", "write"))}
    assert result.returncode == 0 and set(views) == {"read+", "read-", "write+", "write-"}
    top = views["write+"].split(",")[:3]
    assert all("dog" in token.lower() for token in top), views["write+"]
    assert "dog" not in views["write-"].lower()


def test_generate_with_bad_profile_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steerkit: 1\nname: x\nmodel: {arch: llama}\nedits: []\n")
    for profile, message in ((str(bad), "bad.yaml:3: model: missing required field 'd_ff'"), ("nope.yaml", "cannot read profile")):
        result = run_cli("generate", "hi", "--profile", profile)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error:") and message in result.stderr, result.stderr


def test_patch_inspect_export_cvec(gguf, tmp_path):
    from steerkit.profile import Edit, Profile, save_profile
    from test_gguf_patch import binding_of

    profile = tmp_path / "p.yaml"
    save_profile(Profile("p", binding_of(gguf), [Edit(1, 5, "clamp", 2.0), Edit(2, 3, "scale", 0.5)]), profile)
    out = tmp_path / "out.gguf"
    result = run_cli("patch", gguf, str(profile), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 up_proj rows rescaled" in result.stdout and "layers [1]" in result.stdout
    result = run_cli("inspect", str(out))
    assert "patched by steerkit" in result.stdout and "op: clamp" in result.stdout
    result = run_cli("patch", str(out), str(profile), "-o", str(tmp_path / "again.gguf"))
    assert result.returncode == 1 and "already patched" in result.stderr and not (tmp_path / "again.gguf").exists()
    result = run_cli("patch", str(out), str(profile), "-o", str(tmp_path / "again.gguf"), "--allow-repatch")
    assert result.returncode == 0 and (tmp_path / "again.gguf").is_file(), result.stderr
    result = run_cli("export-cvec", str(profile), "-o", str(tmp_path / "v.gguf"), "--model", gguf)
    assert result.returncode == 0 and "layers [1]" in result.stdout and "approximation" in result.stdout
    result = run_cli("patch", gguf, str(profile), "-o", str(tmp_path / "nodir" / "x.gguf"))
    assert result.returncode == 1 and "cannot write" in result.stderr


def test_discover_refuses_a_model_without_mlp_tensors(tmp_path):
    """A GGUF that lacks the FFN tensors discovery reads gets one line naming the missing tensor."""
    from gguf import GGUFReader, GGUFWriter

    source = GGUFReader(save_gguf(tiny_model("llama"), tmp_path / "full.gguf"))
    writer = GGUFWriter(str(tmp_path / "no-ffn.gguf"), "llama")
    for key in ("llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.tokens"):
        field = source.fields[key]
        writer.add_key_value(key, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for tensor in source.tensors:
        if "ffn_up" not in tensor.name:
            writer.add_tensor(tensor.name, tensor.data.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run_cli("discover", "dog", "--model", str(tmp_path / "no-ffn.gguf"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "ffn_up" in result.stderr, result.stderr


def test_approximate_patch_of_a_gguf_transformers_cannot_load_is_one_line(tmp_path):
    """--approximate fits in transformers; a GGUF it cannot load (no attention tensors here) ends in one line."""
    from steerkit.profile import Edit, Profile, save_profile
    from test_gguf_patch import binding_of

    source = str(save_gguf(tiny_model("gemma3_text"), tmp_path / "g.gguf"))
    profile = tmp_path / "p.yaml"
    save_profile(Profile("p", binding_of(source), [Edit(1, 5, "clamp", 2.0)]), profile)
    result = run_cli("patch", source, str(profile), "-o", str(tmp_path / "o.gguf"), "--approximate")
    assert result.returncode == 1 and "transformers cannot load this GGUF" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "o.cvec.gguf").exists()


def test_bad_words_fail_before_torch_or_a_model_loads():
    """With torch and llama.cpp unimportable, a bad concept still gets its one-line error: nothing heavy ran first."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['llama_cpp'] = None; "
            "from steerkit.cli import main; sys.argv = ['steerkit', *sys.argv[1:]]; main()")
    for args in (["steer", "../../etc/passwd", "hi"], ["discover", "x" * 10000], ["steer", "a1", "hi", "--suppress"]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: concept") and len(result.stderr.splitlines()) == 1, result.stderr


def test_patch_of_two_profiles_at_a_strength_computes_the_edits_they_define(gguf, tmp_path):
    """`patch M P Q -s 0.5`: the patched file's MLPs, run by hand from its tensors, compute what the two
    profiles' edits define at half strength (reference: tests/reference.py, from the format); `export-cvec -s 2`
    writes twice the adds."""
    from gguf import GGUFReader

    from reference import activations, edited
    from steerkit.profile import Edit, Profile, save_profile
    from steerkit.runtimes.llamacpp.cvec import read_control_vector
    from test_gguf_patch import binding_of

    first = Profile("p", binding_of(gguf), [Edit(1, 5, "clamp", 2.0), Edit(2, 3, "scale", 0.5)])
    second = Profile("q", binding_of(gguf), [Edit(1, 7, "add", 3.0), Edit(2, 9, "ablate")])
    paths = [tmp_path / "p.yaml", tmp_path / "q.yaml"]
    for profile, path in zip((first, second), paths):
        save_profile(profile, path)
    out = tmp_path / "out.gguf"
    result = run_cli("patch", gguf, *map(str, paths), "-s", "0.5", "-o", str(out))
    assert result.returncode == 0, result.stderr

    def tensors(path):
        return {t.name: torch.tensor(np.asarray(t.data, dtype=np.float32)) for t in GGUFReader(path).tensors}

    plain, patched = tensors(gguf), tensors(out)
    x = torch.randn(6, plain["blk.0.ffn_up.weight"].shape[1], generator=torch.Generator().manual_seed(0))
    edits = first.edits + second.edits
    for layer in (0, 1, 2):
        plain_w, patched_w = ({part: t[f"blk.{layer}.ffn_{part}.weight"] for part in ("gate", "up", "down")}
                              for t in (plain, patched))
        got = patched_w["down"] @ activations(x, patched_w["gate"], patched_w["up"]).T
        got = got + patched.get(f"blk.{layer}.ffn_down.bias", torch.zeros(())).reshape(-1, 1)
        h = activations(x, plain_w["gate"], plain_w["up"])
        for edit in (e for e in edits if e.layer == layer):
            h[:, edit.neuron] = edited(h[:, edit.neuron], edit, 0.5)
        torch.testing.assert_close(got, plain_w["down"] @ h.T, rtol=1e-5, atol=1e-5)
    result = run_cli("export-cvec", str(paths[1]), "-s", "2", "-o", str(tmp_path / "q.cvec.gguf"), "--model", gguf)
    assert result.returncode == 0, result.stderr
    directions = read_control_vector(tmp_path / "q.cvec.gguf")
    assert sorted(directions) == [1]  # the ablation has no vector form (listed in the output)
    np.testing.assert_allclose(directions[1], 2 * 3.0 * plain["blk.1.ffn_down.weight"][:, 7].numpy(), rtol=1e-6)
    assert "ablate" in result.stdout


def test_discover_force_writes_what_it_would_refuse(gguf, tmp_path, monkeypatch):
    """Without --force, a discovery that moved nothing exits 1 and writes nothing; with it, the profile is
    written. (The discovery itself is scripted: the tiny GGUF cannot generate.)"""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import steerkit.api
    from steerkit.cli import app
    from steerkit.profile import Edit, Profile, load_profile
    from test_gguf_patch import binding_of

    profile = Profile("dog", binding_of(gguf), [Edit(1, 5, "add", 2.0)])
    found = SimpleNamespace(moved=False, profile=profile, failure=lambda: "nothing inside the budget moved 'dog'")
    monkeypatch.setattr(steerkit.api, "discover", lambda *args, **kwargs: found)
    out = tmp_path / "dog.yaml"
    refused = CliRunner().invoke(app, ["discover", "dog", "--model", gguf, "-o", str(out), "--quiet"])
    assert refused.exit_code == 1 and not out.exists()
    assert "nothing inside the budget moved 'dog'" in str(refused.exception)  # main() prints it as one error: line
    forced = CliRunner().invoke(app, ["discover", "dog", "--model", gguf, "-o", str(out), "--quiet", "--force"])
    assert forced.exit_code == 0 and load_profile(out).edits == profile.edits, forced.output
