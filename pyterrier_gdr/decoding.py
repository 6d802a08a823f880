"""Beam search constrained to valid cluster identifiers, as batched tensor operations.

At every step, each live beam sits on a node of the CID trie. The valid next tokens of a
node are the digits of its children (in the position-aware vocabulary) and, at a leaf,
end of sequence (EOS). Instead of asking a Python callback per beam and step (as
``generate(prefix_allowed_tokens_fn=...)`` does), the search gathers the ``k + 1``
candidate log-probabilities of every beam at once and masks the invalid ones with the
trie's child table. Finished hypotheses are kept as ``transformers`` keeps them (a pool of
the best ``beam_size`` per query, fed only by EOS candidates ranked within the top
``beam_size``), so with ``length_penalty=0`` both return the same clusters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch

from pyterrier_gdr.clusters import CIDCodec, CIDTrie

__all__ = ["TorchTrie", "constrained_beam_search"]


@dataclass
class TorchTrie:
    """A :class:`~pyterrier_gdr.clusters.CIDTrie` as tensors on one device."""

    children: torch.Tensor  # (n_nodes, k) long, -1 where a digit has no child
    node_leaf: torch.Tensor  # (n_nodes,) long, leaf id or -1
    branching_factor: int
    max_depth: int

    @classmethod
    def from_trie(cls, trie: CIDTrie, *, max_depth: int, device=None) -> "TorchTrie":
        return cls(
            torch.as_tensor(trie.children, dtype=torch.long, device=device),
            torch.as_tensor(trie.node_leaf, dtype=torch.long, device=device),
            trie.children.shape[1],
            max_depth,
        )

    def allowed_tokens(self, prefix: Sequence[int]) -> list:
        """Return the valid next tokens after ``prefix`` (decoder start token first), for the reference path."""
        codec = CIDCodec(self.branching_factor, self.max_depth)
        node = 0
        digits = codec.decode(list(prefix)[1:]) if len(prefix) > 1 else ()
        if len(prefix) > 1 and int(prefix[-1]) in (CIDCodec.EOS, CIDCodec.PAD):
            return [CIDCodec.PAD]
        for digit in digits:
            node = int(self.children[node, digit])
            if node < 0:
                return [CIDCodec.PAD]
        position = len(digits)
        tokens = [position * self.branching_factor + d + 2 for d in range(self.branching_factor) if int(self.children[node, d]) >= 0]
        if int(self.node_leaf[node]) >= 0:
            tokens.append(CIDCodec.EOS)
        return tokens


@torch.no_grad()
def constrained_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: TorchTrie,
    *,
    beam_size: int,
    encoder_outputs=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode the ``beam_size`` most probable valid CIDs of each query.

    Args:
        model: a :class:`~pyterrier_gdr.model.GDRModel`.
        input_ids: ``(B, T)`` query tokens.
        attention_mask: ``(B, T)``.
        trie: the valid CIDs, on the model's device.
        beam_size: beams kept per query (and hypotheses returned).
        encoder_outputs: the encoder's output for these queries, when already computed.

    Returns:
        ``(leaves, scores)``, both ``(B, beam_size)`` and sorted by score: the leaf id of each
        hypothesis (-1 where fewer valid CIDs exist) and its log-probability, the sum of its
        tokens' log-probabilities (-inf where absent).
    """
    device = input_ids.device
    batch, width, k = input_ids.shape[0], beam_size, trie.branching_factor
    neg_inf = torch.tensor(float("-inf"), device=device)
    if encoder_outputs is None:
        encoder_outputs = model.encode(input_ids, attention_mask)
    states = encoder_outputs.last_hidden_state  # (B, T, H)

    # Live beams: trie node, score and tokens so far; beam 0 starts at the root, the others are empty.
    nodes = torch.zeros(batch, width, dtype=torch.long, device=device)
    scores = torch.full((batch, width), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.zeros(batch, width, 1, dtype=torch.long, device=device)
    # Finished hypotheses: the best `width` per query.
    pool_leaves = torch.full((batch, width), -1, dtype=torch.long, device=device)
    pool_scores = torch.full((batch, width), float("-inf"), device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)

    digit_offsets = torch.arange(k, device=device)  # (k,)
    for position in range(trie.max_depth + 1):
        live = torch.isfinite(scores) & ~done[:, None]  # (B, W)
        if not live.any():
            break
        rows = live.nonzero(as_tuple=False)  # (n, 2): query, beam
        query_index, beam_index = rows[:, 0], rows[:, 1]

        # Decoder on the live beams only, each with its query's encoder states.
        row_outputs = type(encoder_outputs)(last_hidden_state=states[query_index])
        logits = model.decoder_logits(row_outputs, attention_mask[query_index], tokens[query_index, beam_index])
        log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (n, vocab)

        # Candidates per beam: k digits at this position, then EOS; invalid ones are -inf.
        digit_tokens = position * k + digit_offsets + 2  # (k,)
        in_vocab = digit_tokens < log_probs.shape[1]
        candidate_log_probs = torch.full((len(rows), k + 1), float("-inf"), device=device)
        candidate_log_probs[:, :k][:, in_vocab] = log_probs[:, digit_tokens[in_vocab]]
        candidate_log_probs[:, k] = log_probs[:, 1]
        row_nodes = nodes[query_index, beam_index]  # (n,)
        valid = torch.cat([trie.children[row_nodes] >= 0, (trie.node_leaf[row_nodes] >= 0)[:, None]], dim=1)  # (n, k+1)
        candidate_log_probs = torch.where(valid, candidate_log_probs, neg_inf)

        candidates = torch.full((batch, width, k + 1), float("-inf"), device=device)
        candidates[query_index, beam_index] = scores[query_index, beam_index, None] + candidate_log_probs
        flat = candidates.view(batch, width * (k + 1))  # (B, W*(k+1))

        # Finished: EOS candidates ranked within the top `width` of all candidates join the pool.
        top_scores, top_index = flat.topk(min(width, flat.shape[1]), dim=1)
        is_eos = (top_index % (k + 1)) == k
        eos_scores = torch.where(is_eos, top_scores, neg_inf)
        eos_leaves = trie.node_leaf[nodes.gather(1, top_index // (k + 1))]
        merged_scores = torch.cat([pool_scores, eos_scores], dim=1)
        merged_leaves = torch.cat([pool_leaves, torch.where(is_eos, eos_leaves, -1)], dim=1)
        pool_scores, order = merged_scores.topk(width, dim=1)
        pool_leaves = merged_leaves.gather(1, order)

        # Live: the best `width` non-EOS candidates.
        digits_only = candidates.clone()
        digits_only[:, :, k] = float("-inf")
        next_scores, next_index = digits_only.view(batch, -1).topk(width, dim=1)
        source_beam, digit = next_index // (k + 1), next_index % (k + 1)
        next_nodes = trie.children[nodes.gather(1, source_beam), digit.clamp(max=k - 1)]
        next_tokens = torch.where(torch.isfinite(next_scores), position * k + digit + 2, 0)
        tokens = torch.cat([tokens.gather(1, source_beam[:, :, None].expand(-1, -1, tokens.shape[2])), next_tokens[:, :, None]], dim=2)
        nodes = torch.where(torch.isfinite(next_scores), next_nodes, 0)
        scores = next_scores

        # A query is done when its pool is full and no live beam can beat the pool's worst
        # hypothesis: log-probabilities only decrease as a CID grows.
        pool_full = torch.isfinite(pool_scores[:, -1])
        best_live = scores.max(dim=1).values
        done |= pool_full & (best_live <= pool_scores[:, -1])

    return pool_leaves, pool_scores
