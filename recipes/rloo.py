"""REINFORCE Leave-One-Out on a proxy model, against a learned reward model (or any reward).

# Offline ladder on CPU: the reward model recipes/reward.py trained, then RLOO against it
```bash
python recipes/reward.py --config recipes/configs/reward_ladder_cpu.yaml
python recipes/rloo.py --config recipes/configs/rloo_ladder_cpu.yaml
```

# A CLIMB proxy on one GPU, vLLM colocated (`pip install -e '.[vllm]'`)
```bash
accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/reward.py \
    --config recipes/configs/reward_climb_62m.yaml
accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/rloo.py \
    --config recipes/configs/rloo_climb_62m.yaml
```

Each completion's baseline is the mean reward of the other completions of its prompt. The evaluation
reports the learned reward and, on a built-in task, the gold reward side by side: a policy can learn
to please the reward model without getting more answers right. Any field of `RLArguments`,
`trl.RLOOConfig` or `trl.ModelConfig` can be overridden on the command line.
"""

from trl import RLOOConfig, RLOOTrainer

from align_proxy.recipe import prepare_run, run_script
from align_proxy.rl import RLArguments, check_rollout_backend, configure_rollouts, reward_set


def main(script_args: RLArguments, training_args: RLOOConfig, model_args):
    check_rollout_backend(training_args)  # a missing vLLM fails here, not after the base evaluation
    rewards = reward_set(script_args, training_args)
    run = prepare_run("rloo", script_args, training_args, model_args)
    # Proxy-speed defaults may change training_args and model_args here (micro-batch split, checkpointing,
    # padding-free batches, compiled layers): each change printed as `setting: before -> after (why)`.
    run.apply_speed_plan()  # --proxy_speed false keeps the config as written
    evaluation = run.evaluation(rewards=rewards)  # sampled as in training, scored by the same rewards
    base = run.evaluate_base(evaluation)
    run.track_reward_curve(rewards)  # --curve_every: gold and proxy reward against KL during training
    trainer = RLOOTrainer(**run.trainer_kwargs(), reward_funcs=rewards.funcs)
    configure_rollouts(trainer, script_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return run.finish(trainer, evaluation, base)


if __name__ == "__main__":
    run_script("rloo", main)
