"""A learned reward: the reward model `recipes/reward.py` trained, as a reward function with TRL's signature.

TRL can take a reward model's path itself, but it scores `prompt + completion` without the BOS and
EOS tokens the reward trainer put around every pair it learned from, so its scores drift from the
ones the model was trained (and evaluated) to give. This wrapper scores exactly the way
`align_proxy.scoring.reward_scores` does, with the reward model's own tokenizer. A conversation (TRL's
conversational format) is rendered through that tokenizer's own chat template, prompt and reply as one
conversation, as TRL's RewardTrainer renders the pairs it trains on; a reward model whose tokenizer has no template
was trained on text, and reads the prompt's last message and the reply's text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from align_proxy.rewards.arith import _prompt_text, _text
from align_proxy.rewards.combine import RewardError

if TYPE_CHECKING:
    import torch

# torch, transformers and the scorer are imported where a reward model is loaded or scores: checking a spec
# (`align_proxy.rewards.check_reward_spec`, which a study's coordinator runs on its judge) needs none of them.


# `owner/name`: what a Hub repository id looks like (a local path that does not exist may too: errors say both).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """A Hugging Face Hub repository id (`owner/name`) that is not a local path."""
    return bool(HUB_ID.match(name)) and not Path(name).expanduser().exists()


def check_hub_reward_model(model_id: str) -> None:
    """A Hub id names a reward model (a one-label sequence classifier), checked on its config alone (no weights
    load); offline, or when the Hub does not have it, an error that says how to fix it."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        raise RewardError(f"reward {model_id!r}: there is no directory {model_id} here, and as a Hugging Face Hub id "
                          f"it could not be read ({str(err).splitlines()[0]}). Offline, download it where there is "
                          f"network (`huggingface-cli download {model_id} --local-dir DIR`) and pass DIR") from None
    architectures = config.architectures or []
    if not any(arch.endswith("ForSequenceClassification") for arch in architectures) or config.num_labels != 1:
        raise RewardError(f"reward {model_id!r} is a Hub model ({', '.join(architectures) or 'no architecture'}, "
                          f"{config.num_labels} labels), not a reward model: a one-label ...ForSequenceClassification")


def is_reward_model_dir(path: str | Path) -> bool:
    """A local directory holding a one-label sequence classifier (what `recipes/reward.py` writes)."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(arch.endswith("ForSequenceClassification") for arch in architectures)


class LearnedReward:
    """Scores completions with a trained reward model; higher means the model prefers it.

    The scale is whatever the reward model learned (a logit), not a probability: weight it against
    other rewards with `--reward_weights`.
    """

    __name__ = "learned_reward"

    def __init__(self, path: str | Path, device: str | torch.device | None = None, batch_size: int = 64):
        """`path`: a directory recipes/reward.py wrote, or a Hub id of a reward model (a RewardBench one, say)."""
        if isinstance(path, str) and is_hub_id(path):
            check_hub_reward_model(path)
            self.path = path
        elif is_reward_model_dir(path):
            self.path = str(Path(path).expanduser())
        else:
            raise RewardError(f"{Path(path).expanduser()} is not a reward model: expected the output directory of "
                              "recipes/reward.py (a config.json of a ...ForSequenceClassification model). Train one "
                              "with `python recipes/reward.py --config recipes/configs/reward_ladder_cpu.yaml`.")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if device is None:
            from accelerate import PartialState

            device = PartialState().device  # each process scores its own completions on its own device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32).to(device)
        if self.model.config.num_labels != 1:
            raise RewardError(f"{self.path} has {self.model.config.num_labels} labels; a reward model has one score")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False)
        self.batch_size = batch_size

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        from align_proxy.scoring import reward_scores

        if prompts and isinstance(prompts[0], list) and self.tokenizer.chat_template is not None:
            replies = [c if isinstance(c, list) else [{"role": "assistant", "content": c}] for c in completions]
            return reward_scores(self.model, self.tokenizer, list(prompts), replies, batch_size=self.batch_size)
        return reward_scores(self.model, self.tokenizer, [_prompt_text(p) for p in prompts],
                             [_text(c) for c in completions], batch_size=self.batch_size)
