"""Direct Preference Optimization on a proxy model, evaluated before and after.

# Offline ladder on CPU (docs/guides/recipes.md)
```bash
python recipes/dpo.py --config recipes/configs/dpo_ladder_cpu.yaml
```

# A CLIMB proxy on one GPU
```bash
accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/dpo.py \
    --config recipes/configs/dpo_climb_62m.yaml
```

# DeepSpeed ZeRO-2 over two CPU processes (how the distributed path is tested)
```bash
accelerate launch --config_file recipes/accelerate/deepspeed_cpu.yaml recipes/dpo.py \
    --config recipes/configs/dpo_ladder_cpu.yaml
```

Any field of `RecipeArguments`, `trl.DPOConfig` or `trl.ModelConfig` can be overridden on the
command line (`--beta 0.2`, `--use_peft --lora_r 16`, `--dataset_name data/prefs.jsonl`).
"""

from trl import DPOConfig, DPOTrainer

from align_proxy.recipe import RecipeArguments, prepare_run, run_script


def main(script_args: RecipeArguments, training_args: DPOConfig, model_args):
    run = prepare_run("dpo", script_args, training_args, model_args)
    # Proxy-speed defaults may change training_args and model_args here (micro-batch split, checkpointing,
    # padding-free batches, compiled layers): each change printed as `setting: before -> after (why)`.
    run.apply_speed_plan()  # --proxy_speed false keeps the config as written
    evaluation = run.evaluation(beta=training_args.beta)  # the implicit reward against the base model needs beta
    base = run.evaluate_base(evaluation)
    trainer = DPOTrainer(**run.trainer_kwargs())
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer, evaluation, base)


if __name__ == "__main__":
    run_script("dpo", main)
