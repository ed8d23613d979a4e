"""The Nemotron-CLIMB proxies' shapes and where their checkpoints live: facts both the registry (which
resolves their names) and the converter (which needs their head counts) read, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaConfig

CLIMB_REPO = "nvidia/nemotron-climb-proxy-models"
# The Llama-2 tokenizer the proxies were trained with, from an ungated public copy.
LLAMA2_TOKENIZER = "hf-internal-testing/llama-tokenizer"


@dataclass(frozen=True)
class ClimbVariant:
    name: str
    variant: str  # as the release names it
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    megatron_checkpoint: str

    def config(self) -> LlamaConfig:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=32000, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=32, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=64, tie_word_embeddings=True,
            max_position_embeddings=4096,
        )


# Shapes from the model card (see shared PROXIES.md): 32 layers, head dim 64, GQA ratio 3.
CLIMB = {
    v.name: v
    for v in (
        ClimbVariant("climb-62m", "62m", 384, 1024, 6, 2, "iter_2499000/mp_rank_00/model_optim_rng.pt"),
        ClimbVariant("climb-350m", "350m", 960, 2560, 15, 5, "iter_2384053/mp_rank_00/model_optim_rng.pt"),
    )
}
