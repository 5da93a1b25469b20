"""`steerkit bake`: a Hugging Face folder with the edits in its weights, reloaded by stock transformers."""

from __future__ import annotations

import json

import pytest
import torch

from steerkit.errors import SteerkitError
from steerkit.profile import Edit, Profile, parse_profile
from steerkit.runtimes.hf import model_binding
from steerkit.runtimes.hf.checkpoint import MANIFEST, write_baked_checkpoint
from reference import logits, manual_edit
from tiny_models import save_hf, tiny_model, tiny_tokens

EDITS = [Edit(1, 5, "clamp", 4.0), Edit(2, 7, "add", -3.0), Edit(0, 3, "scale", 2.5), Edit(2, 9, "ablate")]


def _reload(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_baked_folder_reloads_in_stock_transformers_with_the_edits(tmp_path, monkeypatch):
    model = tiny_model("llama")
    folder = save_hf(model, tmp_path / "hf")
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: _FakeTokenizer())
    profile = Profile("t", model_binding(model), EDITS)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with manual_edit(model, EDITS, strength=0.5):
        expected = logits(model, ids)
    out = write_baked_checkpoint(str(folder), [profile], tmp_path / "baked", strength=0.5)
    reloaded = _reload(out)
    assert reloaded.config.mlp_bias is True
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=1e-5, rtol=1e-5)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["strength"] == 0.5 and parse_profile(manifest["profiles"][0]["yaml"]).edits == EDITS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked", "hf"]  # nothing left beside it


class _FakeTokenizer:
    """Tiny models have no tokenizer: their vocabulary and a file saved are all a checkpoint needs."""

    def get_vocab(self):
        return {token: i for i, token in enumerate(tiny_tokens())}

    def save_pretrained(self, folder):
        (folder / "tokenizer_config.json").write_text("{}")


@pytest.mark.parametrize("case", ["exists", "until", "prompt", "gemma clamp"])
def test_refusals_write_nothing(tmp_path, monkeypatch, case):
    model = tiny_model("gemma3_text" if case == "gemma clamp" else "llama")
    folder = save_hf(model, tmp_path / "hf")
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: _FakeTokenizer())
    binding = model_binding(model)
    profile = {"until": Profile("u", binding, EDITS, positions="generated", until="dog"),
               "prompt": Profile("p", binding, EDITS, positions="prompt")}.get(case, Profile("t", binding, EDITS))
    target = tmp_path / "baked"
    if case == "exists":
        target.mkdir()
    with pytest.raises(SteerkitError) as caught:
        write_baked_checkpoint(str(folder), [profile], target)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["baked", "hf"] if case == "exists" else ["hf"])
