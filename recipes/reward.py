"""Reward-model training on a proxy: a scalar head on the base model, fit to preference pairs.

# Offline ladder on CPU
```bash
python recipes/reward.py --config recipes/configs/reward_ladder_cpu.yaml
```

# A CLIMB proxy on one GPU
```bash
accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/reward.py \
    --config recipes/configs/reward_climb_62m.yaml
```

The output directory holds an `AutoModelForSequenceClassification` (one label) that scores
prompt + response. Its preference accuracy before training is that of the freshly initialised
score head: near chance.
"""

from trl import RewardConfig, RewardTrainer

from align_proxy.recipe import RecipeArguments, prepare_run, run_script


def main(script_args: RecipeArguments, training_args: RewardConfig, model_args):
    if model_args.use_peft and model_args.lora_task_type == "CAUSAL_LM":
        # A reward model is a sequence classifier: LoRA must also train and save its score head.
        model_args.lora_task_type = "SEQ_CLS"
    run = prepare_run("reward", script_args, training_args, model_args)
    # Proxy-speed defaults may change training_args and model_args here (micro-batch split, checkpointing,
    # padding-free batches, compiled layers): each change printed as `setting: before -> after (why)`.
    run.apply_speed_plan()  # --proxy_speed false keeps the config as written
    evaluation = run.evaluation()  # the base: the model with a freshly initialised (seeded) score head
    base = run.evaluate_base(evaluation)
    trainer = RewardTrainer(**run.trainer_kwargs())
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer, evaluation, base)


if __name__ == "__main__":
    run_script("reward", main)
