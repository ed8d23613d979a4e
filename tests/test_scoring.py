"""Evaluation's log-prob scoring takes the log-softmax a few rows at a time, and gives exactly the numbers of the
whole batch at once (a study's metrics must not move with the chunking)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align_proxy import scoring
from align_proxy.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
from align_proxy.evals.rl import sequence_logprobs

PROMPTS = ["12+35=", "1+1=", "7+8=", "40+2=", "3+3=", "9+10="]
COMPLETIONS = ["47", "2", "15", "42", "6", "19"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, initializer_range=0.2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def whole_batch_logprobs(model, tokenizer) -> list[float]:
    """The unchunked computation: one fp32 log-softmax over the whole padded batch."""
    pairs = [scoring._tokenize_pair(tokenizer, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    ids, mask = scoring.pad_rows([ids for ids, _ in pairs], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return [logps[row, start - 1: len(full) - 1].sum().item() for row, (full, start) in enumerate(pairs)]


@pytest.fixture
def log_softmax_rows(monkeypatch):
    """The rows of every log-softmax taken over the vocabulary, with the chunk cut to two rows of this batch."""
    monkeypatch.setattr(scoring, "LOGPROB_CHUNK_TOKENS", 2 * 12, raising=False)
    rows, original = [], torch.log_softmax

    def spy(tensor, *args, **kwargs):
        rows.append(tensor.shape[0])
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch, "log_softmax", spy)
    return rows


def test_completion_logprobs_are_chunked_and_equal_the_whole_batch(model_and_tokenizer, log_softmax_rows):
    model, tokenizer = model_and_tokenizer
    expected = whole_batch_logprobs(model, tokenizer)
    log_softmax_rows.clear()
    sums, counts = scoring.completion_logprobs(model, tokenizer, PROMPTS, COMPLETIONS)
    assert sums == expected  # bit for bit
    assert counts == [len(c) + 1 for c in COMPLETIONS]  # one token a character here, and EOS
    assert log_softmax_rows and max(log_softmax_rows) <= 2 < len(PROMPTS)


def test_rl_sequence_logprobs_are_chunked_and_equal_the_whole_batch(model_and_tokenizer, log_softmax_rows):
    model, tokenizer = model_and_tokenizer
    pairs = [scoring._tokenize_pair(tokenizer, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    prompts, completions = [full[:start] for full, start in pairs], [full[start:] for full, start in pairs]
    expected = whole_batch_logprobs(model, tokenizer)
    log_softmax_rows.clear()
    assert sequence_logprobs(model, prompts, completions, tokenizer.pad_token_id) == expected
    assert log_softmax_rows and max(log_softmax_rows) <= 2
