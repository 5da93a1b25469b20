"""The ``steerkit`` command line.  Each command is a thin wrapper over a library function.

Errors caused by input are printed as one line (``error: ...``) with a
non-zero exit code; no traceback reaches the user for them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.sampling import CHAT, Sampling, check_max_tokens
from steerkit.text import printable

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Steer language models by editing MLP neurons read straight from the weights.",
)

ModelOption = typer.Option(None, "--model", "-m", help="smollm2-135m (default), gemma3-270m, a .gguf path or a Hugging Face folder.")


def _parse_neuron(address: str) -> tuple[int, int | None, int]:
    """``LAYER:INDEX`` or, for a mixture of experts, ``LAYER:EXPERT:INDEX``: ``(layer, expert or None, index)``."""
    parts = [p.strip().lstrip("-") for p in address.split(":")]
    if len(parts) not in (2, 3) or not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
        raise SteerkitError(f"neuron {printable(address[:40])!r}: expected LAYER:INDEX, e.g. 29:808 "
                            "(LAYER:EXPERT:INDEX for a mixture of experts)")
    numbers = [int(p) for p in parts]
    return numbers[0], (numbers[1] if len(numbers) == 3 else None), numbers[-1]


def _flat_neuron(reader, layer: int, expert: int | None, neuron: int) -> int:
    """The flat index of an addressed neuron, refusing an address that does not fit the model."""
    from steerkit.profile import neuron_label

    info = reader.info
    if (expert is None) != (info.n_experts == 1):
        raise SteerkitError(f"neuron {neuron_label(layer, neuron, expert)}: {info.label} has "
                            + (f"{info.n_experts} experts per layer: expected LAYER:EXPERT:INDEX" if expert is None
                               else "no experts: expected LAYER:INDEX"))
    if expert is not None and not (expert < info.n_experts and neuron < info.d_ff):
        raise SteerkitError(f"neuron {neuron_label(layer, neuron, expert)} out of range (experts 0..{info.n_experts - 1}, "
                            f"neurons 0..{info.d_ff - 1})")
    return (expert or 0) * info.d_ff + neuron


def _width(info) -> str:
    """A layer's neurons in words: ``1536``, or ``8 experts x 14336``."""
    return f"{info.n_experts} experts x {info.d_ff}" if info.n_experts > 1 else str(info.d_ff)


def _echo_views(top: dict[str, list[tuple[int, str, float]]], show) -> None:
    for view, entries in top.items():
        shown = ", ".join(f"{show(tok)!r} {p:.3f}" for _, tok, p in entries)
        typer.echo(f"  {view:7s} {shown}")


@app.command("map")
def map_command(
    model: Optional[str] = ModelOption,
    top_k: int = typer.Option(10, "--top-k", "-k", help="Tokens kept per neuron and view."),
    side: str = typer.Option("both", help="Which views to summarise: read, write or both (the atlas always holds both)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML page to browse the atlas."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Copy the atlas (.npz) to this path."),
    device: str = typer.Option("cpu", "--device", help="Where the GEMMs run: cpu, cuda, cuda:N or mps."),
) -> None:
    """Decode every MLP neuron through the final norm and LM head (cached per model)."""
    from steerkit.atlas import atlas_for
    from steerkit.atlas_html import word_like_counts, write_atlas_html
    from steerkit.precision import check_device
    from steerkit.weights import open_weights

    if side not in ("read", "write", "both"):
        raise SteerkitError(f"--side {side!r}: expected read, write or both")
    check_device(device)
    reader = open_weights(model)
    atlas = atlas_for(reader, top_k, device=device)
    if output:
        atlas.save(output)
    info = reader.info
    typer.echo(f"atlas of {info.label}: {info.n_layers} layers x {_width(info)} neurons, top-{atlas.meta['top_k']} per view"
               f" ({atlas.meta.get('dtype', 'float32')} on {atlas.meta.get('device', 'cpu')})")
    counts = word_like_counts(atlas)
    for name in ("read", "write") if side == "both" else (side,):
        total = sum(counts[name])
        typer.echo(f"  {name} side: {total} of {info.n_layers * info.neurons} neurons have a word-like top token")
    if output:
        typer.echo(f"wrote {output}")
    if html:
        typer.echo(f"wrote {write_atlas_html(atlas, html)}")


@app.command("neuron")
def neuron_command(
    address: str = typer.Argument(..., help="LAYER:INDEX, e.g. 29:808 (LAYER:EXPERT:INDEX with experts)"),
    model: Optional[str] = ModelOption,
    top_k: int = typer.Option(10, "--top-k", "-k"),
) -> None:
    """Show one neuron's read (up_proj row) and write (down_proj column) decodings, both signs."""
    from steerkit.decode import decode_neuron
    from steerkit.profile import neuron_label
    from steerkit.vocab import token_display
    from steerkit.weights import open_weights

    layer, expert, index = _parse_neuron(address)
    reader = open_weights(model)
    neuron = _flat_neuron(reader, layer, expert, index)
    decoded = decode_neuron(reader, layer, neuron, top_k)
    typer.echo(f"neuron {neuron_label(layer, index, expert)}")
    _echo_views(decoded.top, token_display(reader.tokens()))


@app.command("find")
def find_command(
    word: str = typer.Argument(..., help="A word, e.g. dog"),
    model: Optional[str] = ModelOption,
    limit: int = typer.Option(10, "--limit", "-n", help="How many neurons to list."),
) -> None:
    """List the neurons that give WORD the highest probability (both sides, both signs).

    With the model's atlas cached the answer comes from it; without, only what the question needs is
    computed (an estimate over a vocabulary sample, then the best candidates decoded exactly).
    """
    from steerkit.atlas import cached_atlas
    from steerkit.find import DECODE, SAMPLE, SCREEN, find_word, quick_find
    from steerkit.vocab import token_display, word_variants
    from steerkit.weights import open_weights

    reader = open_weights(model)
    vocab = reader.tokens()
    word_variants(word, vocab)  # refuse a bad word before any heavy work
    atlas = cached_atlas(reader)
    if atlas is None:
        typer.echo(f"no atlas of {reader.info.label} cached: estimating from {SCREEN}, then {SAMPLE} sampled tokens, "
                   f"then decoding the best {DECODE} neuron sides exactly (`steerkit map` builds the whole atlas)",
                   err=True)
        variants, hits = quick_find(reader, word, limit, progress=True)
    else:
        variants, hits = find_word(reader, atlas, word, limit)
    display_token = token_display(vocab)
    binding = reader.binding()
    typer.echo(f"{word!r} as tokens: {', '.join(repr(display_token(t)) for _, t in variants)}")
    for hit in hits:
        top = ", ".join(repr(display_token(vocab[i])) for i in hit.top[:5])
        typer.echo(f"  {binding.label(hit.layer, hit.neuron):<8s} {hit.view:7s} p={hit.prob:.3f}  {top}")


@app.command("compare")
def compare_command(model_a: str, model_b: str) -> None:
    """Share of neurons whose top token is the same in two models of identical shape."""
    from steerkit.atlas import atlas_for
    from steerkit.compare import check_comparable, compare_atlases
    from steerkit.weights import open_weights

    first, second = open_weights(model_a), open_weights(model_b)
    check_comparable(first, second)  # before hours of atlas building on a large model
    result = compare_atlases(atlas_for(first), atlas_for(second))
    typer.echo(f"{result.n_neurons} neurons; share keeping their top-1 token:")
    for view, share in result.same_top1.items():
        typer.echo(f"  {view:7s} {100 * share:.1f}%")


ProfileOption = typer.Option([], "--profile", "-p", help="A profile file or the name of a shipped profile; repeat to combine.")
RuntimeOption = typer.Option("auto", "--runtime", "-r",
                             help="auto (llama.cpp for a GGUF on the CPU, else transformers), hf or llama.cpp.")
DeviceOption = typer.Option("cpu", "--device", help="cpu or cuda (cuda runs on transformers).")
DtypeOption = typer.Option("float32", "--dtype", help="Weights dtype for transformers: float32, bfloat16, float16.")
GreedyOption = typer.Option(False, "--greedy", help="Greedy decoding, no repetition penalty (for tests and measurements).")
TemperatureOption = typer.Option(None, "--temperature", "-t", help=f"Sampling temperature (default {CHAT.temperature}; 0 = greedy).")
SeedOption = typer.Option(None, "--seed", help=f"Sampling seed (default {CHAT.seed}).")
PenaltyOption = typer.Option(None, "--repetition-penalty", help=f"Penalty on tokens already in the answer (default {CHAT.repetition_penalty}).")


def _sampling(greedy: bool, temperature: Optional[float], seed: Optional[int], penalty: Optional[float]) -> Sampling:
    """Chat-app decoding by default; ``--greedy`` (or ``-t 0``) for reproducible measurements."""
    if greedy:
        return Sampling(repetition_penalty=penalty if penalty is not None else 1.0)
    return Sampling(temperature=CHAT.temperature if temperature is None else temperature, top_p=CHAT.top_p,
                    repetition_penalty=CHAT.repetition_penalty if penalty is None else penalty,
                    seed=CHAT.seed if seed is None else seed)


def _open_session(model, profiles, strength, runtime, device, dtype):
    from steerkit.session import open_session

    session = open_session(model, profiles, strength, runtime, device, dtype)
    typer.echo(f"runtime: {session.backend.name} ({printable(session.backend.label)})", err=True)
    return session


@app.command("validate")
def validate_command(
    profile: Path = typer.Argument(..., help="Profile YAML file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Also check the profile fits this model."),
) -> None:
    """Check a profile file (and, with --model, that it fits the model)."""
    from steerkit.plan import compile_plan
    from steerkit.profile import load_profile

    loaded = load_profile(profile)
    if model:
        from steerkit.weights import open_weights

        compile_plan([loaded], open_weights(model).binding())
    typer.echo(f"{printable(str(profile))}: ok ({printable(loaded.name)}: {len(loaded.edits)} edits, "
               f"{printable(loaded.placement)}, strength {loaded.strength:g})")


@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(..., help="The user message."),
    model: Optional[str] = ModelOption,
    profile: list[str] = ProfileOption,
    strength: Optional[float] = typer.Option(None, "--strength", "-s", help="Override every profile's strength."),
    max_tokens: int = typer.Option(200, "--max-tokens", "-n"),
    greedy: bool = GreedyOption,
    temperature: Optional[float] = TemperatureOption,
    seed: Optional[int] = SeedOption,
    repetition_penalty: Optional[float] = PenaltyOption,
    dtype: str = DtypeOption,
    device: str = DeviceOption,
    runtime: str = RuntimeOption,
) -> None:
    """Answer PROMPT with the model, steered by the given profiles (streams the text)."""
    sampling = _sampling(greedy, temperature, seed, repetition_penalty)
    check_max_tokens(max_tokens)
    session = _open_session(model, profile, strength, runtime, device, dtype)
    session.generate(prompt, max_tokens, sampling, on_text=lambda text: typer.echo(text, nl=False))
    typer.echo()


@app.command("chat")
def chat_command(
    model: Optional[str] = ModelOption,
    profile: list[str] = ProfileOption,
    strength: Optional[float] = typer.Option(None, "--strength", "-s"),
    max_tokens: int = typer.Option(200, "--max-tokens", "-n"),
    greedy: bool = GreedyOption,
    temperature: Optional[float] = TemperatureOption,
    seed: Optional[int] = SeedOption,
    repetition_penalty: Optional[float] = PenaltyOption,
    dtype: str = DtypeOption,
    device: str = DeviceOption,
    runtime: str = RuntimeOption,
) -> None:
    """Interactive chat; switch profiles, strength and steering on/off between turns."""
    from steerkit.chat import HELP, ChatRepl

    sampling = _sampling(greedy, temperature, seed, repetition_penalty)
    check_max_tokens(max_tokens)
    repl = ChatRepl(_open_session(model, profile, strength, runtime, device, dtype), max_tokens, sampling)
    typer.echo(HELP)
    while not repl.done:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if line.startswith("/"):
            for out in repl.command(line):
                typer.echo(out)
        elif line:
            typer.echo("bot> ", nl=False)
            repl.ask(line, on_text=lambda text: typer.echo(text, nl=False))
            typer.echo()


def _echo_discovery(found) -> None:
    calibration = found.profile.provenance["calibration"]
    base = found.baseline
    typer.echo(f"{'setting':>28s}  mentions  relevance  nll    repetition  diversity  score  budget")
    typer.echo(f"{'unsteered':>28s}  {base.mention_rate:8.2f}  {'':9s}  {base.nll:5.2f}  {base.repetition:10.2f}"
               f"  {base.diversity:9.2f}")
    for point in found.sweep:
        mark = "  <- chosen" if point is found.chosen else ""
        summary = point.summary
        typer.echo(f"{point.setting.label():>28s}  {point.stats.mention_rate:8.2f}  {summary.relevance:9.2f}  {point.stats.nll:5.2f}"
                   f"  {point.stats.repetition:10.2f}  {point.stats.diversity:9.2f}  {summary.score:5.2f}"
                   f"  {'ok' if point.in_budget else 'over'}{mark}")
    typer.echo(f"{len(found.profile.edits)} edits, positions {found.profile.positions}; "
               f"calibrated in {calibration['seconds']} s")


@app.command("discover")
def discover_command(
    concept: str = typer.Argument(..., help="A concept word, e.g. dog, Paris, coffee."),
    model: Optional[str] = ModelOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Profile file to write (default: steerkit's cache)."),
    suppress: bool = typer.Option(False, "--suppress", help="Make the model avoid the concept instead."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Calibration prompts, one per line (default: built in)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print the profile path."),
    force: bool = typer.Option(False, "--force", help="Write the profile even when nothing inside the budget moved the concept."),
    positions: str = typer.Option("until", "--positions",
                                  help="until (steer the answer until it names the concept), prompt (steer the "
                                       "prompt) - both run in steerkit - or all (every position: `steerkit patch` "
                                       "can bake it into a GGUF)."),
) -> None:
    """Find the neurons for CONCEPT, calibrate their values on the model, and write a profile.

    Exits 1 without writing when no setting inside the fluency budget moves the concept (--force writes anyway).
    """
    from steerkit.concept import normalise_concept
    from steerkit.profile import DISCOVERY_POSITIONS

    normalise_concept(concept)  # before torch, the model or the atlas
    if positions not in DISCOVERY_POSITIONS:
        raise SteerkitError(f"--positions: expected {', '.join(DISCOVERY_POSITIONS)}, got {printable(positions)!r}")
    from steerkit.api import discover
    from steerkit.discovery import discovered_profile_path
    from steerkit.profile import save_profile
    from steerkit.prompts import read_prompts
    from steerkit.weights import open_weights

    prompt_list = read_prompts(prompts) if prompts else None
    found = discover(concept, model, suppress=suppress, prompts=prompt_list, progress=not quiet, positions=positions,
                     log=(lambda message: None) if quiet else (lambda message: typer.echo(printable(message))))
    if not quiet:
        _echo_discovery(found)
    if not found.moved and not force:
        raise SteerkitError(found.failure())
    target = output or discovered_profile_path(open_weights(model), concept, suppress, positions)
    save_profile(found.profile, target)
    typer.echo(f"wrote {printable(str(target))}")


@app.command("eval")
def eval_command(
    profile: str = typer.Argument(..., help="A profile file or the name of a shipped profile."),
    model: Optional[str] = ModelOption,
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts, one per line (default: built-in set)."),
    concept: Optional[str] = typer.Option(None, "--concept", help="Word to count (default: the profile's concept)."),
    output: Path = typer.Option(Path("eval.json"), "--output", "-o", help="JSON report; the plot goes next to it (.png)."),
    max_tokens: int = typer.Option(40, "--max-tokens", "-n"),
    runtime: str = RuntimeOption,
    device: str = DeviceOption,
) -> None:
    """Score PROFILE on neutral prompts next to the alternatives: unsteered, prompting (a system message),
    prompting plus the profile, and a mean-difference vector (greedy; scores by the unsteered model)."""
    from steerkit.api import load_profile
    from steerkit.discovery import DISCOVERY_NEEDS
    from steerkit.evaluate import evaluate, profile_concept, write_report
    from steerkit.plan import check_binding
    from steerkit.prompts import read_prompts
    from steerkit.runtimes import load_backend
    from steerkit.weights import open_weights

    loaded = load_profile(profile)
    prompt_list = read_prompts(prompts) if prompts else None
    check_max_tokens(max_tokens)
    reader = open_weights(model)
    check_binding(loaded, reader.binding())
    word = profile_concept(loaded, reader.tokens(), concept)
    # The mean-difference baseline needs a backend that reads the residual stream: automatic choice finds one.
    backend = load_backend(model, runtime, device, needs=DISCOVERY_NEEDS if runtime == "auto" else ())
    backend.progress = True
    report = evaluate(loaded, backend, word, prompt_list, max_new_tokens=max_tokens, reader=reader,
                      log=lambda message: typer.echo(message, err=True))
    write_report(report, output, output.with_suffix(".png"))
    typer.echo(f"{printable(report.profile)}: {report.goal} {report.concept!r} on {len(report.prompts)} prompts, "
               f"{max_tokens} tokens, runtime {backend.name}")
    typer.echo(f"{'':22s} {'mention':>7s} {'relevance':>9s} {'NLL':>5s} {'repeat':>6s}  "
               f"{'concept':>7s} {'relevant':>8s} {'fluent':>6s} {'SCORE':>6s}")
    for row in report.rows:
        s = row.summary
        typer.echo(f"{row.label:22s} {s.mention_rate:7.2f} {s.relevance:9.2f} {s.nll:5.2f} {s.repetition:6.2f}  "
                   f"{s.concept_score:7.2f} {s.relevance_score:8.2f} {s.fluency_score:6.2f} {s.score:6.3f}")
    for note in report.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {output} and {output.with_suffix('.png')}")


@app.command("steer")
def steer_command(
    concept: str = typer.Argument(..., help="A concept word, e.g. dog (a shipped, cached or freshly discovered profile)."),
    prompt: str = typer.Argument(..., help="The user message."),
    model: Optional[str] = ModelOption,
    max_tokens: int = typer.Option(120, "--max-tokens", "-n"),
    runtime: str = RuntimeOption,
    suppress: bool = typer.Option(False, "--suppress", help="Steer away from the concept."),
    greedy: bool = GreedyOption,
    temperature: Optional[float] = TemperatureOption,
    seed: Optional[int] = SeedOption,
    repetition_penalty: Optional[float] = PenaltyOption,
) -> None:
    """Show the unsteered and steered answers to PROMPT, side by side (same decoding and seed for both).

    Uses the shipped profile for CONCEPT when it fits the model, else a profile
    discovered earlier (cached), else discovers one now (about a minute).
    """
    from steerkit.concept import normalise_concept

    normalise_concept(concept)  # a bad word fails here, before torch or the model load
    from steerkit.discovery import profile_for_concept

    sampling = _sampling(greedy, temperature, seed, repetition_penalty)
    check_max_tokens(max_tokens)
    profile, origin = profile_for_concept(concept, model, suppress, log=lambda message: typer.echo(printable(message)))
    typer.echo(f"profile: {printable(str(profile))} ({origin})")
    session = _open_session(model, [str(profile)], None, runtime, "cpu", "float32")
    session.enabled = False
    plain = session.generate(prompt, max_tokens, sampling).strip()
    session.enabled = True
    steered_text = session.generate(prompt, max_tokens, sampling).strip()
    _side_by_side(("unsteered", plain), (f"steered: {'no ' if suppress else ''}{printable(concept)}", steered_text))


def _side_by_side(left: tuple[str, str], right: tuple[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, expand=True)
    table.add_column(left[0], ratio=1)
    table.add_column(right[0], ratio=1)
    table.add_row(left[1], right[1])
    Console(width=max(100, Console().width)).print(table)


@app.command("serve")
def serve_command(
    model: Optional[str] = ModelOption,
    runtime: str = RuntimeOption,
    profiles: Optional[Path] = typer.Option(None, "--profiles", help="A folder of profile YAML files to offer too."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (beyond loopback only with --api-key)."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' on /v1."),
    max_queue: int = typer.Option(8, "--max-queue", help="Requests that may wait; more get 429."),
    max_loaded: int = typer.Option(2, "--max-loaded", help="llama.cpp: patched copies kept loaded (least recently used go)."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Serve the model over the OpenAI API; every request picks its steering (model name MODEL+PROFILE)."""
    from steerkit.serving import serve

    serve(model, runtime, profiles, host, port, api_key, max_queue, device, dtype, max_loaded, log=typer.echo)


@app.command("patch")
def patch_command(
    model_file: Path = typer.Argument(..., help="The GGUF to patch (never modified)."),
    profiles: list[str] = typer.Argument(..., help="One or more profiles (files or shipped names), applied in order."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the patched GGUF."),
    strength: Optional[float] = typer.Option(None, "--strength", "-s"),
    allow_repatch: bool = typer.Option(False, "--allow-repatch", help="Patch a file steerkit already patched."),
    approximate: bool = typer.Option(False, "--approximate",
                                     help="Gemma: replace clamp/add edits by a fitted stand-in (norm gains + a control vector next to the output)."),
) -> None:
    """Write a patched GGUF that stock llama.cpp, llama-cpp-python and ollama load as-is."""
    from steerkit.api import load_profile
    from steerkit.runtimes.llamacpp import patch_gguf
    from steerkit.session import check_strength

    strength = check_strength(strength)
    loaded = [load_profile(p) for p in profiles]
    report = patch_gguf(model_file, loaded, output, strength, allow_repatch, approximate=approximate)
    typer.echo(f"wrote {report.output}: {report.scaled_rows} up_proj rows rescaled, "
               f"ffn_down bias in layers {list(report.bias_layers) or 'none'}, profile sha256 {report.profile_sha256[:16]}")
    if report.approximation:
        typer.echo(f"wrote {report.control_vector}")
        typer.echo(printable(report.approximation))


@app.command("bake")
def bake_command(
    model: str = typer.Argument(..., help="The model: a steerkit name (smollm2-135m), a GGUF or a Hugging Face folder."),
    profiles: list[str] = typer.Argument(..., help="One or more profiles (files or shipped names), applied in order."),
    output: Path = typer.Option(..., "--output", "-o", help="The folder to write (must not exist)."),
    strength: Optional[float] = typer.Option(None, "--strength", "-s"),
) -> None:
    """Write a Hugging Face folder with the edits in its weights, for transformers and serving engines."""
    from steerkit.api import load_profile
    from steerkit.runtimes.hf.checkpoint import write_baked_checkpoint
    from steerkit.session import check_strength

    strength = check_strength(strength)
    loaded = [load_profile(p) for p in profiles]
    folder = write_baked_checkpoint(model, loaded, output, strength)
    typer.echo(f"wrote {printable(str(folder))}: {', '.join(printable(p.name) for p in loaded)} baked into the weights")
    if any(e.op in ("clamp", "add") for p in loaded for e in p.edits):
        typer.echo("clamp/add edits are an MLP bias (mlp_bias: true): transformers and vLLM load it; SGLang and TGI "
                   "build their llama MLP without one (docs/runtimes.md)")


@app.command("inspect")
def inspect_command(model_file: Path = typer.Argument(..., help="A GGUF file.")) -> None:
    """Show the steerkit profile embedded in a patched GGUF."""
    from steerkit.runtimes.llamacpp import embedded_profile
    from steerkit.weights.gguf_reader import GGUFWeights

    weights = GGUFWeights(model_file)
    info = weights.info
    typer.echo(f"{model_file}: {info.arch.name}, {info.n_layers} layers x {_width(info)} neurons")
    embedded = embedded_profile(weights)
    if embedded is None:
        typer.echo("not patched by steerkit")
        return
    typer.echo(printable(f"patched by steerkit {embedded['steerkit']} with {', '.join(embedded['names'])} "
                         f"(sha256 {embedded['sha256'][:16]})"))
    if embedded.get("approximation"):
        typer.echo(printable(embedded["approximation"]))
    typer.echo(printable(embedded["yaml"], keep_newlines=True))


@app.command("export-cvec")
def export_cvec_command(
    profile: Path = typer.Argument(..., help="Profile file."),
    output: Path = typer.Option(..., "--output", "-o", help="Control-vector GGUF to write."),
    model: Optional[str] = ModelOption,
    strength: Optional[float] = typer.Option(None, "--strength", "-s"),
) -> None:
    """Write the additive part of a profile as a llama.cpp control vector (--control-vector)."""
    from steerkit.plan import compile_plan
    from steerkit.profile import load_profile
    from steerkit.runtimes.llamacpp import gguf_binding
    from steerkit.runtimes.llamacpp.cvec import export_control_vector, write_control_vector
    from steerkit.session import check_strength
    from steerkit.sources import resolve_model
    from steerkit.weights.gguf_reader import GGUFWeights

    loaded = load_profile(profile)
    source = resolve_model(model)
    if source.kind != "gguf":
        raise SteerkitError(f"model {source.name}: export-cvec needs a GGUF model")
    weights = GGUFWeights(source.path, source.name)
    vector = export_control_vector(compile_plan([loaded], gguf_binding(weights), check_strength(strength)), weights)
    write_control_vector(vector, weights.info.n_layers, output)
    typer.echo(f"wrote {output}: directions for layers {sorted(vector.directions)}")
    for note in vector.left_out:
        typer.echo(f"  not in the vector (approximation): {note}")


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 1."""
    try:
        app()
    except UnsupportedEdit as exc:
        from steerkit.runtimes.base import BACKENDS

        others = [name for name in BACKENDS if name != exc.runtime]
        hint = f" (try --runtime {' or '.join(others)})" if exc.runtime in BACKENDS and others else ""
        typer.echo(f"error: {printable(str(exc))}{hint}", err=True)
        sys.exit(1)
    except SteerkitError as exc:
        typer.echo(f"error: {printable(str(exc))}", err=True)
        sys.exit(1)
    except OSError as exc:  # a file-system refusal no reader anticipated: still one line, naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {printable(where + (exc.strerror or str(exc)))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
