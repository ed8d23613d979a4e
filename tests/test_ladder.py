"""The offline ladder: deterministic for a seed, cached, architecture of the proxies, better with scale."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from align_proxy.models import ladder, ladder_spec
from support import tiny_spec


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def test_same_seed_gives_identical_weights_and_other_seed_differs(tmp_path):
    spec = tiny_spec(steps=20)
    first = ladder.build_ladder(spec, root=tmp_path / "a", progress=False, portable=False)
    second = ladder.build_ladder(spec, root=tmp_path / "b", progress=False, portable=False)
    other = ladder.build_ladder(tiny_spec(seed=1, steps=20), root=tmp_path / "c", progress=False, portable=False)
    for a, b, c in zip(first, second, other):
        wa, wb, wc = weights(a.path), weights(b.path), weights(c.path)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_cached_build_is_reused_not_retrained(tmp_path):
    spec = tiny_spec(steps=5)
    built = ladder.build_ladder(spec, root=tmp_path, progress=False)
    stamp = os.path.getmtime(os.path.join(built[0].path, "model.safetensors"))
    again = ladder.build_ladder(spec, root=tmp_path, progress=False)
    assert [r.path for r in again] == [r.path for r in built]
    assert os.path.getmtime(os.path.join(again[0].path, "model.safetensors")) == stamp
    assert not [p for p in os.listdir(ladder_spec.ladder_dir(spec, tmp_path)) if ".tmp-" in p]  # nothing half-written


def test_fingerprint_changes_with_anything_that_changes_weights():
    assert tiny_spec().fingerprint() == tiny_spec().fingerprint()
    assert tiny_spec().fingerprint() != tiny_spec(seed=1).fingerprint()
    assert tiny_spec().fingerprint() != tiny_spec(steps=601).fingerprint()


def test_rungs_have_the_proxies_architecture(tiny_ladder):
    for report in tiny_ladder:
        config = AutoConfig.from_pretrained(report.path)
        assert config.architectures == ["LlamaForCausalLM"]
        assert config.tie_word_embeddings and config.hidden_act == "silu"
        assert config.num_attention_heads > config.num_key_value_heads  # grouped-query attention
        meta = json.loads(open(os.path.join(report.path, "rung.json")).read())
        assert meta["parameters"] == report.parameters


def test_default_ladder_is_deep_narrow_and_spans_4x_in_parameters():
    from align_proxy.models.registry import parameters_from_config

    spec = ladder_spec.LadderSpec()
    counts = [parameters_from_config(r.config(100, spec.max_positions)) for r in spec.rungs]
    assert len(counts) >= 3 and counts == sorted(counts) and counts[-1] / counts[0] >= 4
    assert all(r.num_hidden_layers == spec.rungs[0].num_hidden_layers for r in spec.rungs)  # width varies only
    assert all(r.hidden_size / r.num_hidden_layers <= 24 for r in spec.rungs)  # deep and narrow, like CLIMB


def test_larger_rung_reaches_lower_heldout_loss(tiny_ladder):
    small, large = tiny_ladder
    assert large.parameters > small.parameters
    assert large.heldout_loss < small.heldout_loss


def test_unknown_rung_names_the_known_ones():
    with pytest.raises(KeyError, match="ladder-s"):
        ladder.rung_path("ladder-xxl")


def test_one_rung_built_alone_equals_the_same_rung_of_a_full_build(tmp_path):
    spec = tiny_spec(steps=10)
    alone = ladder.build_ladder(spec, root=tmp_path / "one", progress=False, only=("tiny-b",), portable=False)
    full = ladder.build_ladder(spec, root=tmp_path / "all", progress=False, portable=False)
    assert [r.name for r in alone] == ["tiny-b"]
    wa, wb = weights(alone[0].path), weights(full[1].path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_rung_another_process_is_building_is_left_to_it_and_waited_for(tmp_path):
    """Two processes building one ladder pretrain different rungs side by side (a test run's workers, the ranks of
    `accelerate launch`): a builder passes over a rung whose lock another holds, then waits for it."""
    import threading

    from filelock import FileLock

    spec = tiny_spec(steps=5)
    directory = ladder_spec.ladder_dir(spec, tmp_path)
    directory.mkdir(parents=True)
    other = FileLock(str(directory / ".tiny-a.lock"))
    other.acquire()  # "another process" is building tiny-a
    built = []
    builder = threading.Thread(target=lambda: built.extend(ladder.build_ladder(spec, root=tmp_path, progress=False,
                                                                               portable=False)))
    builder.start()
    try:
        for _ in range(600):
            if (directory / "tiny-b" / "rung.json").exists():
                break
            builder.join(0.1)
        assert (directory / "tiny-b" / "rung.json").exists(), "the free rung was not built"
        builder.join(0.5)
        assert builder.is_alive() and not (directory / "tiny-a").exists()  # waiting on the held rung, not building it
    finally:
        other.release()
    builder.join(120)
    assert [r.name for r in built] == ["tiny-a", "tiny-b"]  # the held rung, released unbuilt, is built after all


def test_table_reads_rung_metadata_with_fields_it_no_longer_knows(tmp_path):
    spec = tiny_spec(steps=5)
    built = ladder.build_ladder(spec, root=tmp_path, progress=False, only=("tiny-a",), portable=False)
    meta = os.path.join(built[0].path, "rung.json")
    data = json.loads(open(meta).read())
    data["extra"] = {}  # as written by an earlier version
    open(meta, "w").write(json.dumps(data))
    assert ladder_spec.load_table(spec, tmp_path)[0].parameters == built[0].parameters


def test_the_build_runs_on_portable_kernels_whatever_the_calling_process_runs(tmp_path, monkeypatch):
    # Another processor is emulated by the settings that pick kernels by instruction set: ATen's vectorized kernels
    # capped at AVX2 or at none, oneMKL and oneDNN capped at SSE4.2. A native build depends on them (that is how
    # another processor once pretrained other rungs); the default build's child process fixes its own.
    spec = tiny_spec(steps=10)
    builds = {}
    for name, env in {"as-is": {}, "capped": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                                              "ONEDNN_MAX_CPU_ISA": "SSE41"}}.items():
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            builds[name] = ladder.build_ladder(spec, root=tmp_path / name, progress=False, only=("tiny-b",))[0]
    first, second = weights(builds["as-is"].path), weights(builds["capped"].path)
    assert all(torch.equal(first[k], second[k]) for k in first)
    meta = json.loads(open(os.path.join(builds["as-is"].path, "rung.json")).read())
    assert meta["build"] == {"threads": 1, "kernels": "portable", "torch": torch.__version__}


def test_a_native_build_on_other_threads_pretrains_other_rungs_and_says_so(tmp_path):
    # What `align-proxy ladder build --threads 2 --native-kernels` gives a robustness check: other summation orders.
    spec = tiny_spec(steps=10)
    portable = ladder.build_ladder(spec, root=tmp_path / "portable", progress=False, only=("tiny-b",))[0]
    native = ladder.build_ladder(spec, root=tmp_path / "native", progress=False, only=("tiny-b",), threads=2,
                                 portable=False)[0]
    first, second = weights(portable.path), weights(native.path)
    assert not all(torch.equal(first[k], second[k]) for k in first)
    assert max(float((first[k] - second[k]).abs().max()) for k in first) < 1e-2  # the same recipe, other roundings
    meta = json.loads(open(os.path.join(native.path, "rung.json")).read())
    assert meta["build"]["threads"] == 2 and meta["build"]["kernels"] != "portable"
