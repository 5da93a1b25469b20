"""Discovery, evaluation and the shipped profiles on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json

import pytest

from steerkit.runtimes.hf import load_model
from steerkit.runtimes.hf.backend import HFBackend
from steerkit.atlas import atlas_for
from steerkit.discovery import Budget, discover
from steerkit.evaluate import evaluate, profile_concept, profile_goal
from steerkit.metrics import answer_stats
from steerkit.plan import compile_plan
from steerkit.profile import load_profile
from steerkit.prompts import builtin_prompts, read_prompts
from steerkit.shipped import shipped_dir
from steerkit.weights import open_weights

PROFILES_DIR = shipped_dir()

pytestmark = [pytest.mark.real, pytest.mark.slow]

SUMMARY = json.loads((PROFILES_DIR / "eval" / "summary.json").read_text())
# What ships is what the profiles directory holds, not what the bench's summary lists.
DISCOVERED = sorted(path.stem for path in PROFILES_DIR.glob("*.yaml")
                    if load_profile(path).provenance.get("method", "").startswith("steerkit discover"))


@pytest.fixture(scope="module")
def tools():
    reader = open_weights("smollm2-135m")
    model, tokenizer = load_model("smollm2-135m")
    return reader, atlas_for(reader, progress=False), HFBackend(model, tokenizer)


def test_discovered_dog_profile_meets_the_paper_demo(tools):
    reader, atlas, evaluator = tools
    found = discover("dog", reader, atlas, evaluator)
    print(f"discover dog: {found.seconds:.1f} s, chosen {found.chosen}")
    assert found.chosen.in_budget and (found.profile.positions, found.profile.until) == ("generated", "dog")
    assert (29, 808) in {(c.layer, c.neuron) for c in found.candidates}  # the paper's dog neuron is among them
    report = evaluate(found.profile, evaluator, found.concept, strengths=(1.0,), baselines=False)
    base, steered = report.at(0.0), report.at(1.0)
    print(f"neutral prompts: dog mentioned {base.mention_rate:.2f} -> {steered.mention_rate:.2f}, "
          f"NLL {base.nll:.2f} -> {steered.nll:.2f}, repetition {base.repetition:.2f} -> {steered.repetition:.2f}")
    assert len(report.prompts) >= 10
    assert base.mention_rate <= 0.10 and steered.mention_rate >= 0.80
    assert Budget().allows(steered, base)
    answer = evaluator.generate(["What is your favourite animal?"], [compile_plan([found.profile])], 20)[0][0]
    assert "dog" in answer.lower(), answer


def _prompts_for(name: str) -> list[str]:
    recorded = SUMMARY[name]["prompts"]
    return builtin_prompts("neutral") if recorded == "built-in neutral" else read_prompts(PROFILES_DIR.parent / recorded)


@pytest.fixture(scope="module")
def shipped_stats(tools):
    """(unsteered, steered) figures of every shipped discovered profile: one batched generation per prompt set."""
    _, atlas, evaluator = tools
    by_prompts: dict[tuple[str, ...], list[str]] = {}
    for name in DISCOVERED:
        by_prompts.setdefault(tuple(_prompts_for(name)), []).append(name)
    results = {}
    for prompts, names in by_prompts.items():
        profiles = [load_profile(PROFILES_DIR / f"{name}.yaml") for name in names]
        answers = evaluator.generate(list(prompts), [None] + [compile_plan([p]) for p in profiles], 40)
        nll = evaluator.nll([p for _ in answers for p in prompts], [a for row in answers for a in row])
        n = len(prompts)
        for k, (name, profile) in enumerate(zip(names, profiles), start=1):
            # Each profile's figures from the shared batch: its own concept over the same answers.
            concept = profile_concept(profile, atlas.vocab)
            results[name] = (profile_goal(profile), answer_stats(concept, answers[0], nll[:n]),
                             answer_stats(concept, answers[k], nll[k * n:(k + 1) * n]))
    return results


def test_the_summary_records_every_shipped_discovered_profile_and_nothing_else():
    assert DISCOVERED == sorted(name for name, row in SUMMARY.items() if row["shipped"])


def test_at_least_twelve_profiles_ship_with_two_suppressing():
    goals = [profile_goal(load_profile(PROFILES_DIR / f"{name}.yaml")) for name in DISCOVERED]
    assert len(goals) >= 12 and goals.count("suppress") >= 2
    for name in DISCOVERED:
        assert load_profile(PROFILES_DIR / f"{name}.yaml").provenance["method"].startswith("steerkit discover")


@pytest.mark.parametrize("name", DISCOVERED)
def test_shipped_profile_steers_the_real_model(shipped_stats, name):
    goal, base, steered = shipped_stats[name]
    print(f"{name}: mention {base.mention_rate:.2f} -> {steered.mention_rate:.2f}, NLL {base.nll:.2f} -> {steered.nll:.2f}")
    if goal == "suppress":
        assert base.mention_rate >= 0.3 and steered.mention_rate <= 0.2 * base.mention_rate  # cut by 80 % or more
    else:
        assert steered.mention_rate >= 0.5 and steered.mention_rate >= base.mention_rate + 0.4
    assert steered.nll - base.nll <= Budget().nll  # the NLL part of the budget holds for every shipped profile
    # The README table is what the test measures. Greedy decoding is deterministic on one machine; on another
    # CPU a near-tie between two tokens can break the other way, so one prompt's answer may differ.
    assert abs(SUMMARY[name]["mention_steered"] - steered.mention_rate) <= 1 / len(_prompts_for(name)) + 1e-9
    assert (PROFILES_DIR / "eval" / f"{name}.png").is_file() and (PROFILES_DIR / "eval" / f"{name}.json").is_file()


def test_cli_eval_writes_json_and_plot_in_both_runtimes(tmp_path):
    """`steerkit eval` on the shipped dog profile, through transformers and through llama.cpp."""
    import subprocess
    import sys

    import matplotlib.image

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a short poem.\nDescribe your ideal day.\n")
    rates, methods = {}, {}
    for runtime in ("hf", "llama.cpp"):
        out = tmp_path / f"{runtime}.json"
        result = subprocess.run([sys.executable, "-m", "steerkit.cli", "eval", "dog", "--prompts", str(prompts),
                                 "-n", "12", "-o", str(out), "--runtime", runtime],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        report = json.loads(out.read_text())
        image = matplotlib.image.imread(out.with_suffix(".png"))  # a real picture (its bars: test_scoring)
        assert image.shape[0] >= 300 and image.std() > 0.05
        methods[runtime] = [row["method"] for row in report["rows"]]
        rates[runtime] = {row["strength"]: row["mention_rate"] for row in report["rows"]
                          if row["method"] in ("unsteered", "profile")}
        assert "SCORE" in result.stdout and "prompting+profile x1" in result.stdout
    print(rates)
    assert rates["hf"][0.0] == rates["llama.cpp"][0.0] == 0.0
    assert max(rates["hf"].values()) >= 0.5 and max(rates["llama.cpp"].values()) >= 0.5
    # Every alternative is scored next to the profile; llama.cpp cannot build the mean-difference vector and says so.
    assert {"prompting", "prompting+profile", "mean-difference"} <= set(methods["hf"])
    assert "mean-difference" not in methods["llama.cpp"] and "prompting" in methods["llama.cpp"]


def test_cli_steer_prints_both_answers():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "steerkit.cli", "steer", "dog", "What is your favourite animal?",
                             "-n", "20"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "unsteered" in result.stdout and "steered: dog" in result.stdout and "(shipped)" in result.stdout
    assert "dog" in result.stdout.lower().split("steered: dog", 1)[1]
