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

from align_proxy.recipe import RecipeArguments, make_parser, prepare_run
from evals.suite import evaluate_policy


def evaluate(run, model_path: str) -> dict:
    # The base model is the reference: its evaluation is then the very one a DPO run of it makes,
    # so a transfer study scores each base model once for both recipes.
    return evaluate_policy(model_path, run.tokenizer, run.evalset, reference_path=run.model.path,
                           max_new_tokens=run.script_args.eval_max_new_tokens)


def main(script_args: RecipeArguments, training_args: SFTConfig, model_args) -> dict:
    run = prepare_run("sft", script_args, training_args, model_args, evaluate)
    trainer = SFTTrainer(**run.trainer_kwargs())
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer)


if __name__ == "__main__":
    main(*make_parser(SFTConfig).parse_args_and_config())
