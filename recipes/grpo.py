"""Group Relative Policy Optimization on a proxy model, against verifiable or learned rewards.

# Offline ladder on CPU: gold reward on the built-in task, from an SFT-trained rung
```bash
python recipes/sft.py --config recipes/configs/sft_ladder_cpu.yaml --output_dir outputs/sft-ladder-m
python recipes/grpo.py --config recipes/configs/grpo_ladder_cpu.yaml --model_name_or_path outputs/sft-ladder-m
```

# A CLIMB proxy on one GPU, vLLM colocated (`pip install -e '.[vllm]'`)
```bash
accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/grpo.py \
    --config recipes/configs/grpo_climb_62m.yaml
```

# Several GPUs: vLLM as a server on one, training on the others
```bash
CUDA_VISIBLE_DEVICES=0 trl vllm-serve --model <the policy's directory> &
CUDA_VISIBLE_DEVICES=1,2,3,4,5,6,7 accelerate launch --config_file recipes/accelerate/multi_gpu.yaml \
    --num_processes 7 recipes/grpo.py --config recipes/configs/grpo_climb_350m.yaml --vllm_mode server
```

Rewards are named in the config (`reward_funcs`, weighted by `reward_weights`; see `rewards/`). Data:
prompt-only (`prompt`: text, or lists of messages rendered by the tokenizer's chat template in training
and evaluation alike); other columns (a built-in task's `answer`) reach the rewards. Any field of
`RLArguments`, `trl.GRPOConfig` or `trl.ModelConfig` can be overridden on the command line
(`--beta 0.02`, `--num_generations 16`, `--use_vllm false`).
"""

from trl import GRPOConfig, GRPOTrainer

from align_proxy.recipe import prepare_run, run_script
from align_proxy.rl import RLArguments, check_rollout_backend, configure_rollouts, reward_set


def main(script_args: RLArguments, training_args: GRPOConfig, model_args):
    check_rollout_backend(training_args)  # a missing vLLM fails here, not after the base evaluation
    rewards = reward_set(script_args, training_args)
    run = prepare_run("grpo", script_args, training_args, model_args)
    # Proxy-speed defaults may change training_args and model_args here (micro-batch split, checkpointing,
    # padding-free batches, compiled layers): each change printed as `setting: before -> after (why)`.
    run.apply_speed_plan()  # --proxy_speed false keeps the config as written
    evaluation = run.evaluation(rewards=rewards)  # sampled as in training, scored by the same rewards
    base = run.evaluate_base(evaluation)
    run.track_reward_curve(rewards)  # --curve_every: gold and proxy reward against KL during training
    trainer = GRPOTrainer(**run.trainer_kwargs(), reward_funcs=rewards.funcs)
    configure_rollouts(trainer, script_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer, evaluation, base)


if __name__ == "__main__":
    run_script("grpo", main)
