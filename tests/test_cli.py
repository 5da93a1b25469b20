"""The CLI: commands work on tiny models, and bad input ends in one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

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
    ],
)
def test_bad_input_is_one_line(gguf, args, message):
    result = run_cli(*args, "--model", gguf)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1] and message in errors[0], result.stderr


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


def test_find_before_the_atlas_lists_what_it_lists_after(gguf):
    """No atlas cached: `find` estimates, decodes its best candidates exactly, and says so; then `map`."""
    before = run_cli("find", "dog", "--model", gguf, "-n", "5")
    assert before.returncode == 0 and "no atlas" in before.stderr and "exactly" in before.stderr
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
