"""Model-side scoring shared by every evaluation: completion log-probabilities, reward-model
scores and greedy generations, batched and run without gradients."""

from __future__ import annotations

import torch
from trl.data_utils import _tokenize, common_prefix_length


def _tokenize_pair(tokenizer, prompt, completion) -> tuple[list[int], int]:
    """Token ids of prompt + completion and where the completion starts, as TRL's SFT and DPO trainers tokenize
    them (the prompt alone and the whole, split where they diverge), so evaluation scores exactly the tokens
    training optimised. Text gets EOS appended, as those trainers append it; conversational rows (lists of
    messages) are rendered by the tokenizer's chat template through `trl.data_utils`, the prompt with its
    generation prompt, and end as the template ends a turn."""
    if isinstance(prompt, list):
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True)["input_ids"]
        full_ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    return list(full_ids), common_prefix_length(prompt_ids, full_ids)


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


# Log-probs are taken this many tokens at a time (whole rows): a batch's full fp32 log_softmax over the vocabulary
# would be batch x length x vocab x 4 bytes (8 GB at 64 x 1k tokens x 32k) beside the logits themselves.
LOGPROB_CHUNK_TOKENS = 8192


def _autocast(device: torch.device):
    """bf16 autocast on a GPU that has it (half the activations and logits); CPU scoring stays fp32, bit for bit."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def span_logprob_sums(model, ids: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int]]) -> list[float]:
    """Summed log-probability of tokens `start..end-1` of each right-padded row (`spans[row] = (start, end)`, start
    >= 1: token t is predicted at position t-1). The log-softmax runs over a few rows at a time, in fp32."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    with _autocast(device):
        logits = model(input_ids=ids, attention_mask=mask.to(device)).logits
    rows = max(1, LOGPROB_CHUNK_TOKENS // max(1, ids.size(1)))
    sums = []
    for lo in range(0, ids.size(0), rows):
        chunk = logits[lo:lo + rows, :-1].float()
        logps = torch.log_softmax(chunk, dim=-1).gather(-1, ids[lo:lo + rows, 1:, None]).squeeze(-1)
        for row, (start, end) in enumerate(spans[lo:lo + rows]):
            sums.append(logps[row, start - 1: end - 1].sum().item())
        del chunk, logps
    return sums


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list, completions: list,
                        batch_size: int = 64) -> tuple[list[float], list[int]]:
    """Summed log-probability of each completion (EOS included) given its prompt, and its length in tokens. Prompts
    and completions are strings, or lists of messages (`_tokenize_pair`)."""
    model.eval()
    sums, counts = [], []
    for lo in range(0, len(prompts), batch_size):
        pairs = [_tokenize_pair(tokenizer, p, c) for p, c in zip(prompts[lo:lo + batch_size],
                                                                 completions[lo:lo + batch_size])]
        ids, mask = pad_rows([ids for ids, _ in pairs], tokenizer.pad_token_id)
        sums.extend(span_logprob_sums(model, ids, mask, [(start, len(full)) for full, start in pairs]))
        counts.extend(len(full) - start for full, start in pairs)
    return sums, counts


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: list, completions: list, batch_size: int = 64) -> list[float]:
    """Scalar scores of a sequence-classification reward model on prompt + completion (+ EOS for text; a
    conversation as its chat template renders it)."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for lo in range(0, len(prompts), batch_size):
        rows = [_tokenize_pair(tokenizer, p, c)[0] for p, c in zip(prompts[lo:lo + batch_size],
                                                                 completions[lo:lo + batch_size])]
        ids, mask = pad_rows(rows, tokenizer.pad_token_id)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores.extend(out[:, 0].float().tolist())
    return scores


@torch.no_grad()
def greedy_generations(model, tokenizer, prompts: list, max_new_tokens: int = 8, batch_size: int = 128) -> list[str]:
    """Greedy completions (special tokens stripped), left-padded so every prompt ends at the edge. Conversational
    prompts (lists of messages) are rendered by the chat template with its generation prompt, as TRL renders them."""
    model.eval()
    device = next(model.parameters()).device
    conversational = bool(prompts) and isinstance(prompts[0], list)
    if conversational:  # the template writes its own BOS: the tokenizer must not add another
        prompts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = []
    try:
        for lo in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[lo:lo + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not conversational).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts.extend(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return texts
