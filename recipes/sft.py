"""Supervised fine-tuning on a proxy model, evaluated before and after.

# Offline ladder on CPU
```bash
python recipes/sft.py --config recipes/configs/sft_ladder_cpu.yaml
```

# A CLIMB proxy on one GPU
```bash
accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/sft.py \
    --config recipes/configs/sft_climb_62m.yaml
```

Data: prompt-completion (`prompt`, `completion`), language modeling (`text`) or conversational
(`messages`). Any field of `RecipeArguments`, `trl.SFTConfig` or `trl.ModelConfig` can be
overridden on the command line (`--learning_rate 1e-4`, `--use_peft`).
"""

from trl import SFTConfig, SFTTrainer

from align_proxy.recipe import RecipeArguments, prepare_run, run_script


def main(script_args: RecipeArguments, training_args: SFTConfig, model_args):
    run = prepare_run("sft", script_args, training_args, model_args)
    # Proxy-speed defaults may change training_args and model_args here (micro-batch split, checkpointing,
    # padding-free batches, compiled layers): each change printed as `setting: before -> after (why)`.
    run.apply_speed_plan()  # --proxy_speed false keeps the config as written
    # Scored against the base model as reference: the very evaluation a DPO run of it makes, so a transfer
    # study scores each base model once for both recipes.
    evaluation = run.evaluation()
    base = run.evaluate_base(evaluation)
    trainer = SFTTrainer(**run.trainer_kwargs())
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer, evaluation, base)


if __name__ == "__main__":
    run_script("sft", main)
