"""The README's Python examples run as written, on the real default model, and do what they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real, pytest.mark.slow]

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    first, second = printed.getvalue().split("\n", 1)
    assert "dog" in first.lower(), first  # "about dogs"
    assert second.strip()  # the backend answered
    import steerkit
    from steerkit.profile import load_profile
    from steerkit.runtimes.llamacpp import embedded_profile
    from steerkit.weights.gguf_reader import GGUFWeights

    assert load_profile(tmp_path / "cat.yaml").name == "cat"
    assert embedded_profile(GGUFWeights(tmp_path / "dog.gguf"))["names"] == ["dog-clamp"]
    assert namespace["found"].chosen.in_budget
    # The baked model was restored: the handle's remove() ran, and the same greedy answer comes back.
    model, tok, ids = namespace["model"], namespace["tok"], namespace["ids"]
    again = model.generate(**ids, max_new_tokens=20, do_sample=False)
    with steerkit.steer(model, "dog", tokenizer=tok):
        steered = model.generate(**ids, max_new_tokens=20, do_sample=False)
    assert again.tolist() != steered.tolist() and namespace["out"].tolist() == steered.tolist()
