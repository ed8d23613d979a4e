"""Proxy-speed defaults: they never override the user, leave CPU runs as they were, and the fast paths compute
the same loss as plain TRL on the same batch (while naive packing, attending across examples, does not)."""

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from align_proxy import padding_free
from align_proxy.models.registry import CLIMB
from align_proxy.recipe import EXPLICIT_KEYS, prepare_run
from align_proxy.speed import MECHANISMS, USER_SET, Device, ModelSpeedCallback, plan_proxy_speed
from support import REPO, build_trainer, load_recipe, parse, step_away_from_reference

H100 = Device(True, "NVIDIA H100", 80 * 2**30, 79 * 2**30, bf16=True, liger=True,
              varlen_attention=padding_free.VARLEN_ATTENTION, cpus=16)
CPU_CONFIGS = sorted((REPO / "recipes" / "configs").glob("*_ladder_cpu.yaml"))
TOLERANCE = 1e-5  # fp32, same weights and batch: only summation order differs


def gpu_plan(recipe: str, model: str, *argv: str, device: Device = H100):
    """The defaults a run would get on an H100, decided on this CPU machine (nothing is built)."""
    script_args, training_args, model_args = parse(
        recipe, "--config", str(REPO / "recipes" / "configs" / f"{recipe}_climb_62m.yaml"), "--use_cpu", "true", *argv)
    model_args.model_name_or_path = model
    plan = apply_speed(recipe, script_args, training_args, model_args, 62_600_000, device=device)
    return plan, training_args, model_args


def apply_speed(recipe, script_args, training_args, model_args, parameters, device=None):
    """What `prepare_run` does: plan (reading which keys the parser saw the user set), then apply."""
    plan = plan_proxy_speed(recipe, script_args, training_args, model_args, parameters,
                            getattr(script_args, EXPLICIT_KEYS), device=device)
    plan.apply(training_args, model_args)
    return plan


def test_planning_changes_nothing_until_applied(random_model):
    script_args, args, model_args = parse("dpo", "--config", str(REPO / "recipes" / "configs" / "dpo_climb_62m.yaml"),
                                          "--bf16", "false", "--use_cpu", "true")
    model_args.model_name_or_path = random_model
    before = (args.to_dict(), dict(vars(model_args)))
    plan = plan_proxy_speed("dpo", script_args, args, model_args, 62_600_000, getattr(script_args, EXPLICIT_KEYS),
                            device=H100)
    assert plan.applied and (args.to_dict(), dict(vars(model_args))) == before
    plan.apply(args, model_args)
    assert args.precompute_ref_log_probs is True and args.optim == "adamw_torch_fused"
    for key, change in plan.applied.items():  # every planned value, and only those, written
        if key not in MECHANISMS:
            assert getattr(model_args if key == "attn_implementation" else args, key) == change["value"], key


# --- whose setting is it ---------------------------------------------------------------------------------

def test_parser_records_config_keys_and_flags_not_values(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\ndataset_name: builtin:arith\nlearning_rate: 1.0e-4\n")
    script_args, *_ = parse("dpo", "--config", str(config), "--gradient_checkpointing", "true", "--beta=0.2",
                            "--no_eval_before")
    explicit = script_args._explicit_keys
    # true is TRL's default for gradient_checkpointing: still the user's choice, and its new name follows it
    assert {"learning_rate", "gradient_checkpointing", "activation_checkpointing", "beta", "eval_before"} <= explicit
    assert "dataloader_num_workers" not in explicit and "torch_compile" not in explicit


def test_gpu_defaults_never_override_a_key_the_user_set(random_model):
    plan, args, model_args = gpu_plan("dpo", random_model, "--torch_compile", "false",
                                      "--precompute_ref_log_probs", "false", "--attn_implementation", "sdpa")
    assert args.torch_compile is False and args.precompute_ref_log_probs is False
    assert model_args.attn_implementation == "sdpa"
    assert args.per_device_train_batch_size == 32 and args.gradient_checkpointing is False  # the YAML's
    for key in ("precompute_ref_log_probs", "attn_implementation", "per_device_train_batch_size"):
        assert plan.skipped[key] == USER_SET
    assert not plan.compiled_layers and "torch_compile" in plan.skipped["compiled_layers"]
    # sdpa packs only with a dense mask: asking for it rules padding-free batches out
    assert not plan.padding_free_batches and "sdpa" in plan.skipped["padding_free_batches"]
    assert args.use_liger_kernel and args.liger_kernel_config == {"fused_linear_cross_entropy": False}
    assert args.dataloader_num_workers == 4 and "dataloader_num_workers" in plan.applied


def test_gpu_defaults_for_each_recipe(random_model):
    sft, args, model_args = gpu_plan("sft", random_model)
    assert args.packing and args.packing_strategy == "bfd" and not sft.padding_free_batches  # TRL packs SFT
    assert model_args.attn_implementation == padding_free.VARLEN_ATTENTION and sft.compiled_layers
    assert not args.torch_compile  # the layers compile in place; the trainer does not compile the whole model
    assert "torch.compile" in sft.skipped["use_liger_kernel"]
    dpo, args, model_args = gpu_plan("dpo", random_model)
    assert dpo.padding_free_batches and args.precompute_ref_log_probs and not args.padding_free
    assert model_args.attn_implementation == padding_free.VARLEN_ATTENTION
    reward, args, _ = gpu_plan("reward", random_model, "--per_device_train_batch_size", "8")
    assert reward.padding_free_batches and args.per_device_train_batch_size == 8
    no_kernel, args, model_args = gpu_plan("dpo", random_model, device=NO_VARLEN)
    assert not no_kernel.padding_free_batches and model_args.attn_implementation is None
    assert "no varlen attention" in no_kernel.skipped["padding_free_batches"]


NO_VARLEN = Device(True, "old GPU", 16 * 2**30, 15 * 2**30, bf16=True)


def test_config_packing_is_undone_without_a_varlen_kernel(random_model):
    """sft_climb_62m.yaml asks for packing: on a GPU without varlen attention its rows of max_length tokens would
    run under a dense block-diagonal mask. The plan undoes it, and says so in the log's diff and the record."""
    plan, args, model_args = gpu_plan("sft", random_model, device=NO_VARLEN)
    assert args.packing is False and model_args.attn_implementation is None
    assert "no varlen attention" in plan.overridden["packing"] and "packing: True -> False, UNDID yours" in plan.diff()
    assert plan.record()["applied"]["packing"]["was"] is True and "packing" not in plan.skipped
    # bf16 off: the kernel cannot run, and each packed example would go through a Python loop
    for recipe in ("sft", "dpo"):
        plan, args, _ = gpu_plan(recipe, random_model, "--bf16", "false")
        assert not getattr(args, "packing", False) and not plan.padding_free_batches, recipe
        assert "bf16 or fp16" in plan.record()["skipped"]["padding_free_batches"], recipe
    # with the kernel and bf16, the config's packing stays
    plan, args, _ = gpu_plan("sft", random_model)
    assert args.packing is True and not plan.overridden


def fake_gpu(monkeypatch, capability: tuple[int, int], kernel: bool = True) -> None:
    """This CPU machine as a GPU of `capability`, with or without PyTorch's varlen kernel."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    monkeypatch.setattr(padding_free, "_KERNEL", (object(), frozenset()) if kernel else None)


def test_varlen_attention_needs_compute_capability_8(monkeypatch):
    monkeypatch.setattr(padding_free, "flash_attn_importable", lambda: False, raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)  # no flash-attn either way
    fake_gpu(monkeypatch, (7, 5))  # T4: neither flash-attn's nor PyTorch's varlen kernel runs
    assert padding_free.varlen_attention_available(True) is None
    fake_gpu(monkeypatch, (9, 0))
    assert padding_free.varlen_attention_available(True) == padding_free.VARLEN_ATTENTION
    assert padding_free.varlen_attention_available(False) is None


def test_a_flash_attn_that_does_not_import_is_not_chosen(tmp_path, monkeypatch):
    """A flash-attn wheel built for another torch is found by find_spec, then fails at import (inside
    from_pretrained, after the data was read): the choice imports it for real."""
    broken = tmp_path / "flash_attn"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    fake_gpu(monkeypatch, (9, 0))
    assert padding_free.varlen_attention_available(True) == padding_free.VARLEN_ATTENTION
    fake_gpu(monkeypatch, (9, 0), kernel=False)
    assert padding_free.varlen_attention_available(True) is None


def micro_batch_plan(tmp_path, *argv: str, free_gib: float = 79, cells: int = 1, accumulation: int | None = None):
    """The batch a 62M SFT run (1024-token rows) on an 80 GiB GPU gets, from a config without a batch size.
    `accumulation`: set as if it were the trainer's default (not recorded as the user's)."""
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\ndataset_name: builtin:arith\nmax_length: 1024\n")
    climb = tmp_path / "climb-62m"
    if not climb.exists():
        CLIMB["climb-62m"].config().save_pretrained(climb)
    script_args, args, model_args = parse("sft", "--config", str(config), "--use_cpu", "true", *argv)
    model_args.model_name_or_path = str(climb)
    if accumulation:
        args.gradient_accumulation_steps = accumulation
    device = Device(True, "GPU", 80 * 2**30, int(free_gib * 2**30), bf16=True,
                    **({"cells_per_gpu": cells} if cells > 1 else {}))
    return apply_speed("sft", script_args, args, model_args, 62_600_000, device=device), args


def test_micro_batch_unknown_shape_is_left_alone(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\ndataset_name: builtin:arith\nmax_length: 1024\n")
    script_args, args, model_args = parse("sft", "--config", str(config), "--use_cpu", "true")
    model_args.model_name_or_path = str(REPO)  # no config.json: the shape is unknown, so nothing is sized
    plan = apply_speed("sft", script_args, args, model_args, 62_600_000, device=H100)
    assert "unknown" in plan.skipped["per_device_train_batch_size"] and args.per_device_train_batch_size == 8


@pytest.mark.parametrize("free_gib, cells, micro, accumulation", [
    (79, 1, 32, 1),  # room for more than the 32 rows a step holds: all of them in one micro-batch
    (20, 1, 16, 2),  # room for 16-31 rows: half the step at a time, twice
    (79, 4, 16, 2),  # the same free memory, but four cells share the GPU: each sizes to a quarter of it
    (3, 1, 1, 32),  # one row at a time
])
def test_micro_batch_trades_against_accumulation_keeping_the_global_batch(tmp_path, free_gib, cells, micro,
                                                                         accumulation):
    plan, args = micro_batch_plan(tmp_path, free_gib=free_gib, cells=cells, accumulation=4)  # 8 x 4 = 32 rows
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (micro, accumulation), plan.applied
    assert args.gradient_checkpointing is False


def test_micro_batch_is_left_to_a_user_who_set_either_half(tmp_path):
    plan, args = micro_batch_plan(tmp_path, "--per_device_train_batch_size", "8", accumulation=4)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 4)
    assert plan.skipped["per_device_train_batch_size"] == USER_SET
    plan, args = micro_batch_plan(tmp_path, "--gradient_accumulation_steps", "4")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 4)
    assert plan.skipped["per_device_train_batch_size"] == "gradient_accumulation_steps " + USER_SET


def test_cells_sharing_a_gpu_get_a_share_of_its_memory():
    assert Device(True, "GPU", 80 * 2**30, 79 * 2**30, cells_per_gpu=4).share_bytes() == 20 * 2**30
    assert Device(True, "GPU", 80 * 2**30, 10 * 2**30, cells_per_gpu=4).share_bytes() == 10 * 2**30


def test_rl_recipes_keep_their_batch(random_model):
    """GRPOConfig derived generation_batch_size from the batch when it was parsed: sizing it later would leave the
    generation batch, and colocated vLLM's memory, out of step."""
    for recipe in ("grpo", "rloo"):
        plan, args, _ = gpu_plan(recipe, random_model)
        assert "per_device_train_batch_size" not in plan.applied
        assert args.generation_batch_size % args.per_device_train_batch_size == 0


def test_ddp_is_told_every_parameter_is_used(random_model):
    for recipe in ("sft", "dpo", "reward", "grpo"):
        plan, args, _ = gpu_plan(recipe, random_model)
        assert args.ddp_find_unused_parameters is False, recipe


@pytest.mark.parametrize("path", CPU_CONFIGS, ids=lambda p: p.name)
def test_shipped_cpu_configs_run_exactly_as_with_plain_trl(path, random_model):
    recipe = path.name.split("_")[0]
    outputs = {}
    for speed in ("true", "false"):
        script_args, args, model_args = parse(recipe, "--config", str(path), "--proxy_speed", speed)
        model_args.model_name_or_path = random_model
        apply_speed(recipe, script_args, args, model_args, 100_000)
        outputs[speed] = (args.to_dict(), vars(model_args))
    assert outputs["true"] == outputs["false"]


# --- same batch, same loss ---------------------------------------------------------------------------------

@contextlib.contextmanager
def naive_packing(monkeypatch):
    """Pack the batch as one sequence (positions running on, one causal span): examples see each other."""
    pack = padding_free._pack

    def naive(*args):
        row, _, _, _, mask = pack(*args)
        n = row.size(1)
        return row, torch.arange(n)[None], torch.tensor([0, n], dtype=torch.int32), n, mask

    with monkeypatch.context() as patch:
        patch.setattr(padding_free, "_pack", naive)
        yield


def loss_on(trainer, examples) -> float:
    batch = trainer.data_collator(examples)
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


@pytest.mark.parametrize("attention", ["sdpa", padding_free.VARLEN_ATTENTION])
def test_sft_packed_row_gives_the_padded_batch_loss(random_model, tmp_path, attention):
    plain, _ = build_trainer("sft", random_model, tmp_path, "--proxy_speed", "false")
    # The GPU path, asked for on CPU: TRL's bfd packing (a padding-free row, positions restarting per example)
    fast, _ = build_trainer("sft", random_model, tmp_path, "--packing", "true", "--attn_implementation", attention)
    assert fast.data_collator.padding_free and not plain.data_collator.padding_free
    examples = [plain.train_dataset[i] for i in range(12)]
    padded, packed = loss_on(plain, examples), loss_on(fast, examples)
    assert abs(padded - packed) < TOLERANCE, (padded, packed)
    # Naive packing: the same row with positions running on, so examples attend to the ones before them
    row = fast.data_collator(examples)
    row["position_ids"] = torch.arange(row["input_ids"].size(1))[None]
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        row.pop(key)
    with torch.no_grad():
        naive = float(fast.compute_loss(fast.model, row))
    assert abs(naive - padded) > 100 * TOLERANCE, (naive, padded)


@pytest.mark.parametrize("attention", ["sdpa", padding_free.VARLEN_ATTENTION])
def test_dpo_padding_free_with_precomputed_reference_gives_the_plain_loss(random_model, tmp_path, attention,
                                                                          monkeypatch):
    plain, _ = build_trainer("dpo", random_model, tmp_path, "--proxy_speed", "false")
    fast, run = build_trainer("dpo", random_model, tmp_path, "--padding_free", "true", "--precompute_ref_log_probs",
                              "true", "--attn_implementation", attention)
    assert run.speed.padding_free_batches and fast.ref_model is None and plain.ref_model is not None
    assert "ref_chosen_logps" in fast.train_dataset.column_names  # scored once, through the packed backbone
    for trainer in (plain, fast):  # the same "trained" policy in both: a loss of log 2 would hide the reference
        step_away_from_reference(trainer.model)
    rows = range(8)
    expected = loss_on(plain, [plain.train_dataset[i] for i in rows])
    fast_examples = [fast.train_dataset[i] for i in rows]
    assert abs(loss_on(fast, fast_examples) - expected) < TOLERANCE
    # Naive packing: one sequence through the whole row, so each answer attends to the pairs before it
    with naive_packing(monkeypatch):
        assert abs(loss_on(fast, fast_examples) - expected) > 100 * TOLERANCE


def test_reward_model_padding_free_gives_the_plain_loss(random_model, tmp_path, monkeypatch):
    plain, _ = build_trainer("reward", random_model, tmp_path, "--proxy_speed", "false")
    fast, _ = build_trainer("reward", random_model, tmp_path, "--attn_implementation", padding_free.VARLEN_ATTENTION)
    fast.model.load_state_dict(plain.model.state_dict())  # the score head is drawn at random when loaded
    ModelSpeedCallback().on_init_end(fast.args, fast.state, fast.control, model=fast.model)  # the GPU path's hook
    assert fast.model.base_model._align_proxy_padding_free
    examples = [plain.train_dataset[i] for i in range(10)]
    expected = loss_on(plain, examples)
    assert abs(loss_on(fast, examples) - expected) < TOLERANCE
    with naive_packing(monkeypatch):
        assert abs(loss_on(fast, examples) - expected) > 100 * TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available() or padding_free._KERNEL is None,
                    reason="PyTorch's varlen FlashAttention kernel runs on CUDA only (the CPU path is the reference)")
def test_varlen_kernel_matches_the_per_example_reference_on_a_gpu():
    torch.manual_seed(0)
    lengths = torch.tensor([5, 130, 1, 64])
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32).cuda()
    total = int(lengths.sum())
    query, key, value = (torch.randn(1, heads, total, 64, device="cuda") for heads in (6, 2, 2))
    module = torch.nn.Module()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast, _ = padding_free.varlen_attention_forward(module, query, key, value, None, cu_seq_lens_q=cu,
                                                        max_length_q=int(lengths.max()))
    reference = padding_free._per_example_sdpa(*(t[0].transpose(0, 1) for t in (query, key, value)), cu, 64 ** -0.5)
    assert fast.dtype == torch.bfloat16 and torch.allclose(fast[0].float(), reference, atol=3e-2)


def test_packing_leaves_what_it_cannot_pack_to_the_original_forward():
    ids = torch.ones(2, 4, dtype=torch.long)
    left_padded = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert padding_free._pack(ids, left_padded, None, {}) is None
    assert padding_free._pack(ids, right_padded, None, {"past_key_values": object()}) is None
    assert padding_free._pack(ids[:1], right_padded[:1], None, {}) is None
    row, positions, cu, longest, _ = padding_free._pack(ids, right_padded, None, {})
    assert positions.tolist() == [[0, 1, 0, 1, 2, 3]] and cu.tolist() == [0, 2, 6] and longest == 4


# --- the recipes record it, the benchmark runs --------------------------------------------------------------

def test_recipe_records_which_speed_settings_it_applied(random_model, tmp_path, capsys):
    module = load_recipe("sft")
    args = parse("sft", "--config", str(REPO / "recipes" / "configs" / "sft_ladder_cpu.yaml"), "--model_name_or_path",
                 random_model, "--output_dir", str(tmp_path), "--builtin_train_size", "32", "--eval_size", "8",
                 "--max_steps", "2", "--no_gradient_checkpointing", "--dataloader_num_workers", "0")
    module.main(*args)
    speed_plan = yaml.safe_load((tmp_path / "run_config.yaml").read_text())["speed_plan"]
    for record in (speed_plan, json.loads((tmp_path / "metrics.json").read_text())["speed"]):
        assert record["enabled"] and record["device"] == "cpu"
        assert record["skipped"]["gradient_checkpointing"] == USER_SET
        assert record["skipped"]["compiled_layers"] == "not on a GPU"
    assert speed_plan["changed"] == {}  # on CPU, with checkpointing the user's, nothing else is the plan's to change
    assert "proxy speed on cpu: 0 setting(s) changed" in capsys.readouterr().out


def test_the_plan_shows_each_change_as_before_and_after(random_model):
    """What the run's log prints when it starts and run_config.yaml keeps under `speed_plan`."""
    plan, args, _ = gpu_plan("dpo", random_model)
    changes = plan.changes()
    assert set(changes) == set(plan.applied)
    assert changes["dataloader_num_workers"] == {"before": 0, "after": 4,
                                                 "why": plan.applied["dataloader_num_workers"]["why"]}
    assert changes["compiled_layers"]["before"] is False and changes["compiled_layers"]["after"] is True
    assert "optim" not in changes and plan.unchanged["optim"] == "already adamw_torch_fused"
    lines = plan.diff().splitlines()
    assert lines[0].startswith(f"proxy speed on {plan.device}: {len(changes)} setting(s) changed")
    assert f"  dataloader_num_workers: 0 -> 4 ({changes['dataloader_num_workers']['why']})" in lines
    assert "precompute_ref_log_probs" in lines[-1] and lines[-1].startswith("  kept yours: ")
    assert plan.config_section()["changed"] == changes and "applied" not in plan.config_section()


def test_a_run_refuses_to_build_its_trainer_before_the_plan_is_applied(random_model, tmp_path):
    args = parse("sft", "--config", str(REPO / "recipes" / "configs" / "sft_ladder_cpu.yaml"), "--model_name_or_path",
                 random_model, "--output_dir", str(tmp_path), "--builtin_train_size", "16", "--eval_before", "false")
    run = prepare_run("sft", *args)
    assert not (tmp_path / "run_config.yaml").exists()
    with pytest.raises(RuntimeError, match="apply_speed_plan"):
        run.trainer_kwargs()
    run.apply_speed_plan()
    assert run.trainer_kwargs()["args"] is args[1] and (tmp_path / "run_config.yaml").exists()


def run_throughput(tmp_path, *args: str) -> dict:
    out = tmp_path / "throughput.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--steps", "2", "--warmup",
                             "1", "--rows", "60", "--batch", "4", "--max-len", "32", *args, "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


def test_throughput_benchmark_compares_recipes_with_plain_trl_on_cpu(tmp_path):
    report = run_throughput(tmp_path)
    measured = {(r["recipe"], r["variant"]) for r in report["results"] if r.get("tokens_per_s", 0) > 0}
    variants = ("trl-plain", "align-proxy", "align-proxy-own-batch")
    assert measured == {(r, v) for r in ("sft", "dpo", "reward") for v in variants} | {("sft", "raw-loop")}
    assert {r["recipe"] for r in report["ratios"]} == {"sft", "dpo", "reward"}
    assert all(0 < r["x_raw"] for r in report["results"])  # each also against the raw loop on its shape
    # the host waits for the device at the start of training and the two edges of the timed window, not each step
    assert all(r["host_syncs"] == 3 for r in report["results"] if r["variant"] != "raw-loop")


def test_throughput_benchmark_measures_concurrent_runs(tmp_path):
    runs = run_throughput(tmp_path, "--recipes", "reward", "--concurrent", "2")["concurrency"]["runs"]
    assert runs[0]["processes"] == 2 and len(runs[0]["per_process_tokens_per_s"]) == 2
    assert runs[0]["aggregate_tokens_per_s"] > 0
