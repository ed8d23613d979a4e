"""The offline ladder's shared tokenizer: character-level over printable ASCII, Llama-style specials.

Character-level keeps every digit its own token (as the Llama-2 tokenizer does), so arithmetic
is learnable by tiny models, and it needs no training data: the vocabulary is fixed by the code.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(4)
# Printable ASCII without the vertical-tab and form-feed control characters.
CHARACTERS = tuple(c for c in string.printable if c not in "\r\x0b\x0c")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer that adds `<s>` in front of every sequence, like Llama-2's."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # BPE with no merges is a character-level model that maps anything unknown to <unk>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=256,
    )
