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

import copy
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch

from pyterrier_gdr.clusters import CIDCodec, CIDTrie
from pyterrier_gdr.model import dense_plus_residual, fused_query_key_value

__all__ = ["TorchTrie", "constrained_beam_search", "DECODER_DTYPES"]

#: The arithmetic the decoder can run in. float32 is exact (the reference's clusters); the
#: 16-bit types are faster where the hardware multiplies them natively, and may differ in close calls.
DECODER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TorchTrie:
    """A :class:`~pyterrier_gdr.clusters.CIDTrie` as tensors on one device."""

    children: torch.Tensor  # (n_nodes, k) long, -1 where a digit has no child
    node_leaf: torch.Tensor  # (n_nodes,) long, leaf id or -1
    branching_factor: int
    max_depth: int
    # First-layer decoder states of every node, one table per dtype and device (see CachedBertDecoder.first_layer_states).
    node_states: dict = field(default_factory=dict, repr=False, compare=False)

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


class CachedBertDecoder:
    """Incremental decoding with the weights of the CID decoder (a ``transformers`` ``BertLMHeadModel``).

    ``transformers`` runs every beam through the decoder at every step and computes the
    cross-attention keys and values for each beam. Here the cross-attention is prepared once
    per query and shared by its beams: for short queries the query and output projections
    are folded into the query's keys and values (see :meth:`start`). Each step feeds one new
    token per live beam: beams that hold no hypothesis (all but one at the first step, those
    beyond the root's children at the second) cost nothing. The first layer's self-attention
    reads only the CID prefix, which is a trie node, so its output is computed once per node
    and looked up (see :meth:`first_layer_states`). In later layers, self-attention reads a
    cache of the earlier tokens' keys and values. The arithmetic is BERT's (post-layer-norm,
    absolute positions), so the logits equal the full forward pass of the same module up to
    rounding, as the tests check. Inference only: dropout is not applied.
    """

    def __init__(self, decoder):
        from transformers.activations import ACT2FN

        config = decoder.config
        self.bert = decoder.bert
        self.head = decoder.cls.predictions
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        activation = ACT2FN[config.hidden_act]
        # In place where the activation allows it: the step's largest tensor need not be allocated twice.
        self.activation = torch.ops.aten.gelu_ if config.hidden_act == "gelu" else activation
        # One product for the self-attention query, key and value of each layer.
        self.qkv = [fused_query_key_value(layer.attention.self) for layer in self.bert.encoder.layer]

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim)  # (..., H) -> (..., heads, head_dim)

    def _attend(self, query: torch.Tensor, current: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        """Return the ``(n, H)`` self-attention context of ``n`` tokens over their earlier tokens and themselves.

        ``query`` is ``(n, heads, d)``, ``current`` the tokens' own ``(n, 2, heads, d)`` key and value, and
        ``earlier`` the ``(t, n, 2, heads, d)`` keys and values of the ``t`` tokens before them. A CID has at
        most ``max_depth + 1`` tokens, so elementwise products cost less than batched matrix products and
        their layout copies.
        """
        scale = self.head_dim ** -0.5
        scores = torch.cat([(earlier[:, :, 0] * query).sum(-1), (current[:, 0] * query).sum(-1)[None]])  # (t + 1, n, heads)
        weights = torch.softmax(scores * scale, dim=0)
        context = (weights[:-1, ..., None] * earlier[:, :, 1]).sum(0) + weights[-1, ..., None] * current[:, 1]
        return context.flatten(1)

    def first_layer_states(self, trie: TorchTrie, *, chunk_size: int = 65536) -> torch.Tensor:
        """Return the ``(n_nodes, H)`` output of the first layer's self-attention block at every trie node.

        A beam at node ``v`` has fed the tokens of ``v``'s CID prefix, and the first layer's
        self-attention reads only those tokens. So its output (after the residual and layer
        norm) is a function of ``v`` alone. It is computed once, level by level, and kept on
        the trie until the decoder's weights change. It takes ``n_nodes * H`` numbers in the
        decoder's dtype (about 2.2 GB for 700,000 nodes of 768 float32 values).
        """
        # One table per dtype and device, for the decoder and weights it was computed with.
        weights = (id(self.bert),) + tuple((p.data_ptr(), p._version) for p in self.bert.parameters())
        key = (self.head.decoder.weight.dtype, self.head.decoder.weight.device)
        cached = trie.node_states.get(key)
        if cached is not None and cached[0] == weights:
            return cached[1]
        trie.node_states.pop(key, None)  # free the stale table before building the new one

        children, k = trie.children, trie.branching_factor
        device = children.device
        embeddings, layer = self.bert.embeddings, self.bert.encoder.layer[0]
        hidden = embeddings.word_embeddings.weight.shape[1]
        num_nodes = len(children)
        parent = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
        digit = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
        rows, columns = (children >= 0).nonzero(as_tuple=True)
        parent[children[rows, columns]] = rows
        digit[children[rows, columns]] = columns
        # Keys and values of the nodes that have children, the only ones later levels attend to.
        has_children = (children >= 0).any(dim=1)
        num_inner = int(has_children.sum())
        key_value_row = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
        key_value_row[has_children] = torch.arange(num_inner, device=device)
        key_values = embeddings.word_embeddings.weight.new_empty(num_inner, 2 * hidden)
        states = embeddings.word_embeddings.weight.new_empty(num_nodes, hidden)

        level = torch.zeros(1, dtype=torch.long, device=device)  # the root, fed the decoder start token (0)
        for depth in range(trie.max_depth + 1):
            for start in range(0, len(level), chunk_size):
                nodes = level[start:start + chunk_size]
                tokens = (depth - 1) * k + digit[nodes] + 2 if depth else torch.zeros_like(nodes)
                x = embeddings.word_embeddings(tokens) + embeddings.position_embeddings.weight[depth]
                x = embeddings.LayerNorm(x + embeddings.token_type_embeddings.weight[0])  # (n, H)
                query_key_value = torch.nn.functional.linear(x, *self.qkv[0])  # (n, 3H)
                ancestors, earlier = nodes, []
                for _ in range(depth):
                    ancestors = parent[ancestors]
                    earlier.append(key_values[key_value_row[ancestors]])
                earlier = torch.stack(earlier[::-1]) if earlier else query_key_value.new_empty(0, len(nodes), 2 * hidden)
                context = self._attend(
                    query_key_value[:, :hidden].view(len(nodes), self.num_heads, self.head_dim),
                    query_key_value[:, hidden:].view(len(nodes), 2, self.num_heads, self.head_dim),
                    earlier.view(depth, len(nodes), 2, self.num_heads, self.head_dim),
                )
                attention_output = layer.attention.output
                states[nodes] = attention_output.LayerNorm(dense_plus_residual(attention_output.dense, context, x))
                inner = has_children[nodes]
                key_values[key_value_row[nodes[inner]]] = query_key_value[inner, hidden:]
            level = children[level].view(-1)
            level = level[level >= 0]
            if not len(level):
                break
        trie.node_states[key] = (weights, states)
        return states

    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor, trie: TorchTrie, *, width: int) -> dict:
        """Precompute the cross-attention of ``(B, T, H)`` encoder states, once per query.

        ``width`` beams per query and the trie's longest CID size the self-attention cache.
        """
        max_length = trie.max_depth + 1
        batch, length, hidden = memory.shape
        heads, head_dim = self.num_heads, self.head_dim
        scale = head_dim ** -0.5
        # Wq and Wo fold into each query's keys and values: head h scores token t by x . (Wq_h^T k_ht) + bq_h . k_ht,
        # and the output is the sum of p_ht (v_ht Wo_h^T), plus bo. This costs no more while heads * T <= hidden.
        fold = heads * length <= hidden
        cross = []
        for layer in self.bert.encoder.layer:
            attention, output = layer.crossattention.self, layer.crossattention.output.dense
            keys = attention.key(memory).view(batch, length, heads, head_dim)  # (B, T, heads, d)
            values = attention.value(memory).view(batch, length, heads, head_dim)
            if not fold:
                cross.append((keys.transpose(1, 2), values.transpose(1, 2)))  # (B, heads, T, d) each
                continue
            query_weight = attention.query.weight.view(heads, head_dim, hidden)  # (heads, d, H)
            score_weight = torch.einsum("hdi,bthd->biht", query_weight, keys).reshape(batch, hidden, heads * length) * scale
            score_bias = torch.einsum("hd,bthd->bht", attention.query.bias.view(heads, head_dim), keys) * scale
            output_weight = output.weight.view(hidden, heads, head_dim)  # (H, heads, d)
            projected_values = torch.einsum("bthd,ohd->bhto", values, output_weight).reshape(batch, heads * length, hidden)
            cross.append((score_weight, score_bias.reshape(batch, 1, heads * length), projected_values))
        bias = torch.zeros(memory_mask.shape, dtype=memory.dtype, device=memory.device)
        bias = bias.masked_fill(memory_mask == 0, float("-inf"))[:, None, None, :]  # (B, 1, 1, T)
        # Self-attention keys and values side by side, (L, B * W, 2H) per layer. The caches never move: `ancestry[t, r]`
        # is the cache row of the step-t token of the beam now in row r, so a reorder rewrites only this small table.
        cache_shape = (max_length, batch * width, 2 * hidden)
        # Left uninitialised: a beam reads only rows its live ancestors wrote. The first layer needs none.
        self_cache = [None] + [memory.new_empty(cache_shape) for _ in cross[1:]]
        ancestry = torch.arange(batch * width, device=memory.device).expand(max_length, -1).clone()  # (L, B * W)
        return {
            "cross": cross, "memory_bias": bias, "self": self_cache, "ancestry": ancestry, "width": width,
            "first_layer": self.first_layer_states(trie),
        }

    def _cross_attention(self, layer, prepared: tuple, x: torch.Tensor, memory_bias: torch.Tensor) -> torch.Tensor:
        """Return the cross-attention output of ``(B, beams, H)`` states ``x``, plus ``x`` (the residual)."""
        batch, beams, hidden = x.shape
        output = layer.crossattention.output.dense
        if len(prepared) == 3:  # folded projections
            score_weight, score_bias, projected_values = prepared
            scores = torch.baddbmm(score_bias, x, score_weight).view(batch, beams, self.num_heads, -1)  # (B, beams, heads, T)
            weights = torch.softmax(scores + memory_bias, dim=-1).view(batch, beams, -1)
            return (x + output.bias).baddbmm_(weights, projected_values)
        keys, values = prepared  # (B, heads, T, d)
        query = self._split(layer.crossattention.self.query(x)).transpose(1, 2)  # (B, heads, beams, d)
        context = torch.nn.functional.scaled_dot_product_attention(
            query, keys, values, attn_mask=memory_bias, scale=self.head_dim ** -0.5,
        )  # (B, heads, beams, d)
        context = context.transpose(1, 2).reshape(batch * beams, hidden)
        return dense_plus_residual(output, context, x.reshape(batch * beams, hidden)).view(batch, beams, hidden)

    def reorder(self, state: dict, source_beam: torch.Tensor, length: int) -> None:
        """Make beam ``w`` of each query continue from beam ``source_beam[b, w]`` (``(B, W)``); ``length`` steps are cached."""
        batch, width = source_beam.shape
        rows = (torch.arange(batch, device=source_beam.device)[:, None] * width + source_beam).view(-1)  # (B * W,)
        ancestry = state["ancestry"]
        ancestry[:length] = ancestry[:length].index_select(1, rows)

    def step(self, nodes: torch.Tensor, position: int, state: dict, live: torch.Tensor) -> torch.Tensor:
        """Advance the ``live`` beams, now at ``(B, W)`` trie ``nodes``, by their token at ``position``.

        Returns their ``(n_live, vocab)`` logits, in ``live.nonzero()`` order (by query, then beam).
        """
        queries, beams = live.nonzero(as_tuple=True)  # (n,), (n,)
        rows = queries * state["width"] + beams  # (n,) rows of the self-attention cache
        x = state["first_layer"].index_select(0, nodes[queries, beams])  # (n, H), after the first self-attention
        batch, hidden = live.shape[0], x.shape[1]
        low, high = int(beams.min()), int(beams.max()) + 1
        dense = len(beams) == batch * (high - low)  # every query has beams low..high live, so no scatter is needed
        state["ancestry"][position, rows] = rows
        cache_rows = batch * state["width"]
        # Flat cache rows of each beam's earlier tokens, (position * n,): step s of the beam in row r is
        # row ancestry[s, r] of step s. The current token's key and value are used as computed.
        steps = torch.arange(position, device=x.device)[:, None] * cache_rows  # (position, 1)
        sources = (steps + state["ancestry"][:position, rows]).view(-1)  # (position * n,)
        contiguous = dense and low == 0 and high == state["width"]  # rows is 0..B*W-1
        for i, layer in enumerate(self.bert.encoder.layer):
            if i > 0:
                # Self-attention over this beam's tokens so far.
                query_key_value = torch.nn.functional.linear(x, *self.qkv[i])  # (n, 3H): query, key, value
                cache = state["self"][i]  # (L, B * W, 2H)
                if contiguous:
                    cache[position] = query_key_value[:, hidden:]
                else:
                    cache[position].index_copy_(0, rows, query_key_value[:, hidden:])
                earlier = cache.view(-1, 2 * hidden).index_select(0, sources)
                context = self._attend(
                    query_key_value[:, :hidden].view(len(x), self.num_heads, self.head_dim),
                    query_key_value[:, hidden:].view(len(x), 2, self.num_heads, self.head_dim),
                    earlier.view(position, len(x), 2, self.num_heads, self.head_dim),
                )  # (n, H)
                attention_output = layer.attention.output
                x = attention_output.LayerNorm(dense_plus_residual(attention_output.dense, context, x))

            # Cross-attention to the query's encoder states, shared by all its beams. The rows are laid out
            # (B, beams lo..hi), so one batched product per query serves all its beams.
            if dense:
                rows_by_query = x.view(batch, high - low, hidden)
            else:
                rows_by_query = x.new_zeros(batch, high - low, hidden)
                rows_by_query[queries, beams - low] = x
            output = self._cross_attention(layer, state["cross"][i], rows_by_query, state["memory_bias"])  # (B, beams, H)
            output = output.view(len(x), hidden) if dense else output[queries, beams - low]  # (n, H), residual added
            x = layer.crossattention.output.LayerNorm(output)

            # Feed-forward.
            hidden_states = self.activation(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(dense_plus_residual(layer.output.dense, hidden_states, x))
        transform = self.head.transform
        x = transform.LayerNorm(self.activation(transform.dense(x)))
        return self.head.decoder(x)  # (n, vocab)


def decoder_in(model, dtype: torch.dtype):
    """Return the model's CID decoder with its weights in ``dtype`` (the decoder itself for its own dtype).

    The copy is kept on the model and made again when the decoder's weights change (training
    updates them in place, which bumps their version counters).
    """
    decoder = model.seq2seq.decoder
    if next(decoder.parameters()).dtype == dtype:
        return decoder
    weights = tuple((p.data_ptr(), p._version) for p in decoder.parameters())
    copies = model.__dict__.setdefault("_decoder_copies", {})
    cached = copies.get(dtype)
    if cached is None or cached[0] != weights:
        cached = (weights, copy.deepcopy(decoder).to(dtype))
        copies[dtype] = cached
    return cached[1]


def _expand_beams(decoder, state, live, scores, nodes, position: int, trie: TorchTrie, width: int) -> torch.Tensor:
    """Return the ``(B, W, k+1)`` scores of every live beam's candidates (k digits, then EOS); -inf where invalid."""
    batch, k = live.shape[0], trie.branching_factor
    device = scores.device
    log_probs = torch.log_softmax(decoder.step(nodes, position, state, live).float(), dim=-1)  # (n_live, vocab)
    digit_tokens = position * k + torch.arange(k, device=device) + 2  # (k,)
    in_vocab = digit_tokens < log_probs.shape[-1]
    expanded = torch.full((len(log_probs), k + 1), float("-inf"), device=device)
    expanded[:, :k][:, in_vocab] = log_probs[:, digit_tokens[in_vocab]]
    expanded[:, k] = log_probs[:, 1]
    valid = torch.cat([trie.children[nodes] >= 0, (trie.node_leaf[nodes] >= 0)[:, :, None]], dim=2)  # (B, W, k+1)
    candidates = torch.full((batch, width, k + 1), float("-inf"), device=device)
    candidates[live] = torch.where(valid[live], scores[live][:, None] + expanded, float("-inf"))
    return candidates


@torch.no_grad()
def constrained_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: TorchTrie,
    *,
    beam_size: int,
    encoder_outputs=None,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode the ``beam_size`` most probable valid CIDs of each query.

    Args:
        model: a :class:`~pyterrier_gdr.model.GDRModel`.
        input_ids: ``(B, T)`` query tokens.
        attention_mask: ``(B, T)``.
        trie: the valid CIDs, on the model's device.
        beam_size: beams kept per query (and hypotheses returned).
        encoder_outputs: the encoder's output for these queries, when already computed.
        dtype: the decoder's arithmetic; the model's own when omitted. ``torch.bfloat16`` or
            ``torch.float16`` run a converted copy of the decoder (the encoder is not changed,
            so query vectors stay as they are). Scores are summed in float32 either way.

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
    decoder = CachedBertDecoder(model.seq2seq.decoder if dtype is None else decoder_in(model, dtype))
    memory = encoder_outputs.last_hidden_state.to(decoder.head.decoder.weight.dtype)
    state = decoder.start(memory, attention_mask, trie, width=width)

    # Live beams: trie node and score; beam 0 starts at the root (fed the decoder start token), the others are empty.
    nodes = torch.zeros(batch, width, dtype=torch.long, device=device)
    scores = torch.full((batch, width), float("-inf"), device=device)
    scores[:, 0] = 0.0
    # Finished hypotheses: the best `width` per query.
    pool_leaves = torch.full((batch, width), -1, dtype=torch.long, device=device)
    pool_scores = torch.full((batch, width), float("-inf"), device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)

    for position in range(trie.max_depth + 1):
        live = torch.isfinite(scores) & ~done[:, None]  # (B, W)
        # Once a query's pool is full, a beam scoring below its worst hypothesis can never reach the
        # pool, and its candidates could only displace other such beams: it need not be expanded.
        pool_full = torch.isfinite(pool_scores[:, -1])
        live &= ~(pool_full[:, None] & (scores < pool_scores[:, -1:]))
        if not live.any():
            break
        candidates = _expand_beams(decoder, state, live, scores, nodes, position, trie, width)  # (B, W, k+1)
        flat = candidates.view(batch, width * (k + 1))

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
        candidates[:, :, k] = float("-inf")
        next_scores, next_index = candidates.view(batch, -1).topk(width, dim=1)
        source_beam, digit = next_index // (k + 1), next_index % (k + 1)
        next_nodes = trie.children[nodes.gather(1, source_beam), digit.clamp(max=k - 1)]
        alive = torch.isfinite(next_scores)
        nodes = torch.where(alive, next_nodes, 0)
        scores = next_scores
        decoder.reorder(state, source_beam, position + 1)

        # A query is done when its pool is full and no live beam can beat the pool's worst
        # hypothesis: log-probabilities only decrease as a CID grows.
        pool_full = torch.isfinite(pool_scores[:, -1])
        best_live = scores.max(dim=1).values
        done |= pool_full & (best_live <= pool_scores[:, -1])

    return pool_leaves, pool_scores
