"""Hostile GGUF files: steerkit's reader refuses what llama.cpp's loader refuses, in one line naming the field,
with bounded time and memory, and commands leave nothing behind."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_probe import RSS_MARGIN, error_line, run_cli, valid_rss
from hostile_gguf import ARRAY, F32, I32, STRING, U8, U32, U64, RawGGUF, nested_array, tiny_llama
from steerkit.errors import SteerkitError
from steerkit.gguf_file import GGUFFile
from steerkit.weights import open_weights

GGML_IQ1_M = 29  # a type without a plain scale field; its block is 256 values


def _write(tmp_path, gguf: RawGGUF, name: str = "m.gguf"):
    path = tmp_path / name
    path.write_bytes(gguf.bytes())
    return path


def _set_kv(gguf: RawGGUF, key: str, value_type: int, value, item_type=None) -> RawGGUF:
    gguf = copy.deepcopy(gguf)
    gguf.kv = [kv for kv in gguf.kv if kv[0] != key] + [(key, value_type, value, item_type)]
    return gguf


def _with_alignment(value: int, value_type: int = U32) -> RawGGUF:
    gguf = _set_kv(tiny_llama(), "general.alignment", value_type, value)
    gguf.alignment = value if value_type == U32 and value > 0 else 32
    return gguf


def _tensor_edit(index: int, **changes) -> RawGGUF:
    gguf = tiny_llama()
    name, shape, tensor_type, offset, payload = gguf.tensors[index]
    values = dict(name=name, shape=shape, tensor_type=tensor_type, offset=offset, payload=payload) | changes
    gguf.tensors[index] = tuple(values.values())
    return gguf


def _duplicate_tensor() -> RawGGUF:
    gguf = tiny_llama()
    gguf.tensors.append(gguf.tensors[0])
    return gguf


def _without(name: str) -> RawGGUF:
    gguf = tiny_llama()
    gguf.tensors = [t for t in gguf.tensors if t[0] != name]
    return gguf


def _duplicate_key() -> RawGGUF:
    gguf = tiny_llama()
    gguf.kv.append(gguf.kv[2])
    return gguf


def _nested(depth: int) -> RawGGUF:
    return _set_kv(tiny_llama(), "deep", ARRAY, nested_array(depth))


CASES = {
    "alignment 0": (_with_alignment(0), "general.alignment is 0, not a power of two"),
    "alignment 3": (_with_alignment(3), "general.alignment is 3, not a power of two"),
    "alignment as u8": (_with_alignment(64, U8), "general.alignment must be a UINT32"),
    "duplicate tensor": (_duplicate_tensor(), "tensor 'token_embd.weight' appears twice"),
    "duplicate key": (_duplicate_key(), "metadata key 'llama.block_count' appears twice"),
    "unaligned offset": (_tensor_edit(1, offset=4), "tensor 'output_norm.weight' is at data offset 4"),
    "offset beyond": (_tensor_edit(2, offset=1 << 40), "is at data offset 1099511627776"),
    "five dimensions": (_tensor_edit(0, shape=(8, 12, 1, 1, 1)), "has 5 dimensions"),
    "unknown tensor type": (_tensor_edit(0, tensor_type=99), "unknown type 99"),
    "IQ1_M row not whole blocks": (_tensor_edit(2, tensor_type=GGML_IQ1_M), "not a multiple of its block of 256"),
    "data size breaks the layout": (_tensor_edit(2, shape=(8, 17)), "is at data offset 928, expected 960"),
    "transposed matrix": (_tensor_edit(-1, shape=(8, 16)), "blk.1.ffn_down.weight has shape [8, 16], expected [16, 8]"),
    "long tensor name": (_tensor_edit(0, name="x" * 64), "64 bytes long"),
    "nested array": (_nested(1), "holds an array of arrays"),
    "nested 20000 deep": (_nested(20000), "holds an array of arrays"),
    "tokens are integers": (_set_kv(tiny_llama(), "tokenizer.ggml.tokens", ARRAY, list(range(12)), I32),
                            "tokenizer.ggml.tokens: expected an array of strings, got an array of INT32"),
    "architecture is a number": (_set_kv(tiny_llama(), "general.architecture", U32, 7),
                                 "general.architecture: expected a string, got UINT32"),
    "block count is a string": (_set_kv(tiny_llama(), "llama.block_count", STRING, "2"),
                                "llama.block_count: expected an integer, got STRING"),
    "block count absurd": (_set_kv(tiny_llama(), "llama.block_count", U64, 1 << 40), "out of range 1..1048576"),
    "rms eps is nan": (_set_kv(tiny_llama(), "llama.attention.layer_norm_rms_epsilon", F32, float("nan")),
                       "expected a finite number"),
    "missing layer tensor": (_without("blk.1.ffn_up.weight"), "tensor 'blk.1.ffn_up.weight' is missing"),
    "counts lie": (RawGGUF(n_kv=1 << 62, n_tensors=5), "more than its"),
    "empty key": (_set_kv(tiny_llama(), "", U32, 1), "a metadata key is empty"),
}


def test_a_well_formed_file_is_read(tmp_path):
    reader = open_weights(str(_write(tmp_path, tiny_llama())))
    assert (reader.info.n_layers, reader.info.d_model, reader.info.d_ff, reader.info.vocab_size) == (2, 8, 16, 12)
    assert reader.up_rows(1).shape == (16, 8) and reader.tokens()[3] == "t3"


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_header_is_refused_in_one_line(tmp_path, case):
    gguf, message = CASES[case]
    path = _write(tmp_path, gguf)
    with pytest.raises(SteerkitError) as info:
        reader = open_weights(str(path))
        reader.binding()  # what every command asks first (it reads the vocabulary)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text, text


def test_steerkit_keys_of_the_wrong_type_are_named(tmp_path):
    from steerkit.runtimes.llamacpp.patch import embedded_profile

    gguf = _set_kv(tiny_llama(), "steerkit.profile.sha256", U32, 5)
    reader = open_weights(str(_write(tmp_path, gguf)))
    with pytest.raises(SteerkitError, match="steerkit.profile.sha256: expected a string, got UINT32"):
        embedded_profile(reader)


def test_a_fifo_or_device_is_not_a_model(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(SteerkitError, match="not a regular file"):
            GGUFFile(path)


# Structural fuzzing: any number in the header may be hostile; the reader either reads the file or refuses it
# with a SteerkitError -- never another exception, never a hang (hypothesis' deadline bounds each example).
_NUMBER = st.one_of(st.integers(0, 70), st.sampled_from([255, 256, 1023, 4096, 65535, 1 << 31, (1 << 32) - 1,
                                                         1 << 40, (1 << 63) - 1, (1 << 64) - 1]))


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_headers_are_read_or_refused_cleanly(tmp_path, data):
    gguf = tiny_llama()
    for _ in range(data.draw(st.integers(1, 4))):
        what = data.draw(st.sampled_from(["kv_type", "kv_value", "dims", "type", "offset", "alignment", "counts",
                                          "truncate"]))
        if what == "kv_type":
            index = data.draw(st.integers(0, len(gguf.kv) - 1))
            new_type = data.draw(st.sampled_from([U8, U32, I32, F32, STRING]))
            gguf.kv[index] = (gguf.kv[index][0], new_type, "x" if new_type == STRING else 1, None)
        elif what == "kv_value":
            index = data.draw(st.integers(2, 4))
            gguf.kv[index] = (gguf.kv[index][0], U64, data.draw(_NUMBER) % (1 << 64), None)
        elif what in ("dims", "type", "offset"):
            index = data.draw(st.integers(0, len(gguf.tensors) - 1))
            name, shape, tensor_type, offset, payload = gguf.tensors[index]
            if what == "dims":
                shape = tuple(data.draw(_NUMBER) % (1 << 64) for _ in range(data.draw(st.integers(0, 5))))
            elif what == "type":
                tensor_type = data.draw(st.integers(0, 45))
            else:
                offset = data.draw(_NUMBER) % (1 << 64)
            gguf.tensors[index] = (name, shape, tensor_type, offset, payload)
        elif what == "alignment":
            value = data.draw(_NUMBER) % (1 << 32)
            gguf = _set_kv(gguf, "general.alignment", U32, value)
            gguf.alignment = value if 0 < value <= 4096 else 32
        elif what == "counts":
            gguf.n_kv, gguf.n_tensors = data.draw(_NUMBER), data.draw(_NUMBER)
    raw = gguf.bytes()
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(raw)
    try:
        reader = open_weights(str(path))
        reader.up_rows(0)
    except SteerkitError as exc:
        assert "\n" not in str(exc)


def _valid_model_command(command: str, tmp_path_factory) -> tuple[list[str], Path]:
    """``command`` on a valid tiny model (what a hostile header may cost no more memory than)."""
    folder = tmp_path_factory.mktemp("valid")
    path = _write(folder, tiny_llama(), "model.gguf")
    profile = folder / "p.yaml"
    profile.write_text(_PROFILE)
    args = {"patch": ["patch", str(path), str(profile), "-o", str(folder / "out.gguf")],
            "neuron": ["neuron", "1:3", "--model", str(path)], "inspect": ["inspect", str(path)]}[command]
    return args, folder


_PROFILE = ("steerkit: 1\nname: p\nmodel: {arch: llama, n_layers: 2, d_model: 8, d_ff: 16, vocab_size: 12}\n"
            "edits:\n  - {layer: 1, neuron: 3, op: scale, value: 2.0}\n")


# Every case but integer tokens, which `inspect` rightly never reads (the other two commands refuse it).
@pytest.mark.parametrize("case", [case for case in CASES if case != "tokens are integers"])
def test_commands_refuse_hostile_models_and_leave_nothing(tmp_path, tmp_path_factory, case):
    gguf, message = CASES[case]
    path = _write(tmp_path, gguf, "model.gguf")
    profile = tmp_path / "p.yaml"
    profile.write_text(_PROFILE)
    before = sorted(os.listdir(tmp_path))
    for args in (["patch", str(path), str(profile), "-o", str(tmp_path / "out.gguf")], ["neuron", "1:3", "--model", str(path)],
                 ["inspect", str(path)]):
        result, rss = run_cli(*args, cwd=tmp_path)
        assert message in error_line(result), result.stderr
        baseline = valid_rss(f"model {args[0]}", lambda: _valid_model_command(args[0], tmp_path_factory))
        print(f"{case}: {args[0]} peak RSS {rss / 2**20:.0f} MiB (valid model: {baseline / 2**20:.0f} MiB)")
        assert rss <= baseline + path.stat().st_size + RSS_MARGIN
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file, no cache entry
