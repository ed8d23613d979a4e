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

from trl import RewardConfig, RewardTrainer, get_peft_config

from align_proxy.recipe import RecipeArguments, make_parser, prepare_run
from evals.suite import EvalSet, evaluate_reward_model


def evaluate(run, model_path: str) -> dict:
    evalset = EvalSet.for_recipe("reward", run.data.test, run.data.task, run.script_args.eval_size,
                                 run.training_args.seed)
    return evaluate_reward_model(model_path, run.tokenizer, evalset, seed=run.training_args.seed)


def main(script_args: RecipeArguments, training_args: RewardConfig, model_args) -> dict:
    if model_args.use_peft and model_args.lora_task_type == "CAUSAL_LM":
        # A reward model is a sequence classifier: LoRA must also train and save its score head.
        model_args.lora_task_type = "SEQ_CLS"
    run = prepare_run("reward", script_args, training_args, model_args, evaluate)
    trainer = RewardTrainer(
        model=run.model.path,
        args=training_args,
        train_dataset=run.data.train,
        eval_dataset=run.data.test if training_args.eval_strategy != "no" else None,
        processing_class=run.tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer)


if __name__ == "__main__":
    main(*make_parser(RewardConfig).parse_args_and_config())
