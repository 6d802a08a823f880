"""Batched greedy decoding with key/value caches for the base and the side network."""
from __future__ import annotations

from typing import List, Sequence

import torch

from .model import QSTModel

__all__ = ["greedy_generate"]


@torch.no_grad()
def greedy_generate(
    model: QSTModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_token_id: int,
    stop_token_ids: Sequence[int],
) -> List[List[int]]:
    """Generate greedily from each prompt until a stop token or ``max_new_tokens``.

    Prompts are left-padded into one batch. Positions count real tokens only, so a padded
    prompt is decoded as it would be alone, up to floating-point noise of the batched products.

    Args:
        model: the QST model (or base alone) to decode with.
        prompts: token ids of each prompt, none empty.
        max_new_tokens: generation limit per prompt.
        pad_token_id: id placed left of shorter prompts.
        stop_token_ids: ids that end a sequence; they are not returned.

    Returns:
        the generated token ids of each prompt, stop token excluded.
    """
    if not prompts:
        return []
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.device
    batch_size = len(prompts)
    length = max(len(prompt) for prompt in prompts)

    input_ids = torch.full((batch_size, length), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long, device=device)
        attention_mask[row, length - len(prompt):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    stops = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    generated: List[List[int]] = [[] for _ in range(batch_size)]

    was_training = model.training
    model.eval()
    try:
        output = model(input_ids, attention_mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        for step in range(max_new_tokens):
            next_tokens = output.logits[:, -1].argmax(-1)
            finished_now = torch.isin(next_tokens, stops)
            for row, token in enumerate(next_tokens.tolist()):
                if not finished[row] and not finished_now[row]:
                    generated[row].append(token)
            finished |= finished_now
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            # Finished rows keep decoding a pad token so the batch stays rectangular; their output is ignored.
            feed = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch_size, 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
            output = model(feed, attention_mask, position_ids=position_ids, caches=output.caches,
                           use_cache=True, logits_to_keep=1)
    finally:
        model.train(was_training)
    return generated
