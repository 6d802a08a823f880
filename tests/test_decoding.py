import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from pyterrier_gdr.clusters import ClusterTreeConfig, build_cluster_tree
from pyterrier_gdr.decoding import TorchTrie, constrained_beam_search
from pyterrier_gdr.model import GDRModel, GDRModelConfig, _new_decoder

QUERIES = [
    "who won super bowl 50",
    "what is anarchism",
    "capital of france",
    "when did einstein publish relativity",
    "how many moons does mars have",
    "largest city in alaska",
]
# One question longer than a decoder head has dimensions (16 in the test model), so the cross-attention
# projections are not folded into the keys and values (see CachedBertDecoder.start).
LONG_QUERIES = QUERIES[:2] + ["which of the two rivers that meet at the old stone bridge north of the town carries more water in spring"]


@pytest.fixture(scope="module")
def tree():
    vectors = np.random.default_rng(0).standard_normal((1500, 16)).astype(np.float32)
    return build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=6, leaf_size=6, adaptive=True))


@pytest.fixture(scope="module")
def model(tree, encoder_path):
    """A tiny random GDR model: real tokenizer, small random encoder and decoder."""
    torch.manual_seed(0)
    codec = tree.codec()
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    config = GDRModelConfig(encoder=encoder_path, vocab_size=codec.vocab_size, max_cid_length=tree.max_depth + 1, query_dim=32, decoder_heads=2)
    return GDRModel(config, encoder, _new_decoder(config, 32), tokenizer).eval()


def reference_leaves(model, tree, trie, beam, queries=QUERIES):
    """Top clusters by transformers' generate with a per-step Python callback."""
    tokens = model.tokenize(queries)
    output = model.seq2seq.generate(
        **tokens, num_beams=beam, num_return_sequences=beam, max_new_tokens=tree.max_depth + 1, do_sample=False,
        length_penalty=0.0, early_stopping=False, output_scores=True, return_dict_in_generate=True,
        prefix_allowed_tokens_fn=lambda batch_id, prefix: trie.allowed_tokens(prefix.tolist()),
    )
    codec = tree.codec()
    leaf_of_code = {tree.leaf_code(leaf): leaf for leaf in range(tree.num_leaves)}
    sequences = output.sequences.view(len(queries), beam, -1)
    leaves = [[leaf_of_code.get(codec.decode(seq.tolist()[1:]), -1) for seq in row] for row in sequences]
    return leaves, output.sequences_scores.view(len(queries), beam)


@pytest.mark.parametrize("beam,queries", [(2, QUERIES), (4, QUERIES), (16, QUERIES), (4, LONG_QUERIES)])
def test_matches_prefix_allowed_tokens_fn(model, tree, beam, queries):
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    tokens = model.tokenize(queries)
    leaves, scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=beam)
    expected_leaves, expected_scores = reference_leaves(model, tree, trie, beam, queries)
    assert leaves.tolist() == expected_leaves
    assert torch.allclose(scores, expected_scores, atol=1e-4)


def test_never_returns_invalid_cid(model, tree):
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    tokens = model.tokenize(QUERIES)
    leaves, scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=30)
    assert ((leaves >= 0) & (leaves < tree.num_leaves)).all()
    for row in leaves.tolist():
        assert len(set(row)) == len(row)


def test_scores_sorted_and_are_log_probabilities(model, tree):
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    tokens = model.tokenize(QUERIES)
    _, scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=10)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert (scores <= 0).all()


def test_beam_larger_than_valid_cids(model):
    vectors = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    small = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=2, leaf_size=10))
    trie = TorchTrie.from_trie(small.trie(), max_depth=small.max_depth)
    tokens = model.tokenize(QUERIES[:2])
    leaves, scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=8)
    found = leaves[0][leaves[0] >= 0]
    assert sorted(found.tolist()) == list(range(small.num_leaves))
    assert torch.isinf(scores[0, small.num_leaves:]).all()


def test_allowed_tokens_follow_trie(tree):
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    first = trie.allowed_tokens([0])
    assert first
    assert all(2 <= t < 2 + tree.config.branching_factor for t in first)
    leaf_code = tree.leaf_code(0)
    prefix = [0] + tree.codec().encode(leaf_code)[:-1]
    assert trie.allowed_tokens(prefix) == [1]


@pytest.mark.parametrize("queries", [QUERIES[:3], LONG_QUERIES], ids=["folded", "unfolded"])
def test_cached_steps_equal_full_forward(model, tree, queries):
    from pyterrier_gdr.decoding import CachedBertDecoder

    tokens = model.tokenize(queries)
    heads = model.seq2seq.decoder.config.num_attention_heads
    assert (heads * tokens["input_ids"].shape[1] <= 32) == (queries is not LONG_QUERIES)
    encoder_outputs = model.encode(**tokens)
    labels = torch.as_tensor(tree.leaf_tokens(np.array([0, 5, 9])))  # (3, L)
    decoder_inputs = torch.zeros_like(labels)
    decoder_inputs[:, 1:] = labels[:, :-1]
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    # The trie node of each row after each fed token: the root after the start token, then one digit at a time.
    codes = [tree.leaf_code(leaf) for leaf in (0, 5, 9)]
    nodes = torch.zeros(3, tree.max_depth + 1, dtype=torch.long)
    for row, code in enumerate(codes):
        for depth, digit in enumerate(code, start=1):
            nodes[row, depth] = trie.children[nodes[row, depth - 1], digit]
    with torch.no_grad():
        full = model.decoder_logits(encoder_outputs, tokens["attention_mask"], decoder_inputs)  # (3, L, vocab)
        stepper = CachedBertDecoder(model.seq2seq.decoder)
        state = stepper.start(encoder_outputs.last_hidden_state, tokens["attention_mask"], trie, width=1)
        for position in range(max(len(code) for code in codes) + 1):
            live = torch.tensor([[position <= len(code)] for code in codes])  # a row ends after its last digit
            step = stepper.step(nodes[:, position:position + 1], position, state, live)  # (n_live, vocab)
            assert torch.allclose(step, full[live[:, 0], position], atol=1e-4)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_unpadded_encoder_matches_full_pass(model, encoder_path, which):
    """In inference the encoder skips padding, and on real tokens it must equal transformers' padded pass."""
    from pyterrier_gdr.model import _unpadded_encoding_supported

    if which == "minilm":
        model = GDRModel.from_encoder(encoder_path, vocab_size=20, max_cid_length=3, query_dim=384).eval()
    assert _unpadded_encoding_supported(model.seq2seq.encoder)
    tokens = model.tokenize(LONG_QUERIES + QUERIES)  # lengths from 4 to over 20 tokens
    real = tokens["attention_mask"].bool()
    assert not real.all()
    with torch.no_grad():
        unpadded = model.encode(**tokens).last_hidden_state
        full = model.seq2seq.encoder(**tokens).last_hidden_state
    assert torch.allclose(unpadded[real], full[real], atol=1e-5)
    assert (unpadded[~real] == 0).all()
    # Training (gradients on) and a model in training mode take transformers' own pass, dropout included.
    assert model.encode(**tokens).last_hidden_state.requires_grad
    model.train()
    try:
        with torch.no_grad():
            assert model.encode(**tokens).last_hidden_state[~real].abs().sum() > 0
    finally:
        model.eval()


def test_unpadded_encoding_only_for_plain_bert(model):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    from pyterrier_gdr.model import _unpadded_encoding_supported

    small = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    assert _unpadded_encoding_supported(BertModel(BertConfig(**small)))
    assert not _unpadded_encoding_supported(BertModel(BertConfig(hidden_act="relu", **small)))
    assert not _unpadded_encoding_supported(BertModel(BertConfig(position_embedding_type="relative_key", **small)))
    assert not _unpadded_encoding_supported(RobertaModel(RobertaConfig(**small)))  # positions offset by the padding index


def teacher_forced_scores(model, tree, queries, leaves):
    """float32 log-probability of each ``(B, C)`` leaf's CID (EOS included), by a full forward pass."""
    codec = tree.codec()
    tokens = model.tokenize(queries)
    encoder_outputs = model.encode(tokens["input_ids"], tokens["attention_mask"])
    scores = torch.full(leaves.shape, float("-inf"))
    for i in range(len(queries)):
        for j, leaf in enumerate(leaves[i].tolist()):
            if leaf < 0:
                continue
            cid = codec.encode(tree.leaf_code(leaf))  # digits, then EOS
            inputs = torch.tensor([[0] + cid[:-1]])
            memory = type(encoder_outputs)(last_hidden_state=encoder_outputs.last_hidden_state[i:i + 1])
            log_probs = torch.log_softmax(model.decoder_logits(memory, tokens["attention_mask"][i:i + 1], inputs)[0], dim=-1)
            scores[i, j] = log_probs[torch.arange(len(cid)), torch.tensor(cid)].sum()
    return scores


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lower_precision_only_swaps_close_clusters(model, tree, dtype):
    """A 16-bit decoder returns valid clusters whose float32 scores are within rounding of float32's top clusters."""
    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    tokens = model.tokenize(QUERIES)
    beam = 10
    with torch.no_grad():
        exact_leaves, exact_scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=beam)
        leaves, scores = constrained_beam_search(model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=beam, dtype=dtype)
        rescored = teacher_forced_scores(model, tree, QUERIES, leaves)
    assert scores.dtype == torch.float32
    assert ((leaves >= 0) & (leaves < tree.num_leaves)).all()
    assert all(len(set(row)) == len(row) for row in leaves.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert not torch.equal(scores, exact_scores)  # the 16-bit arithmetic ran
    # The 16-bit scores estimate the float32 log-probabilities of the same CIDs ...
    assert torch.allclose(scores, rescored, atol=0.05)
    # ... and each cluster it keeps scores, in float32, at least about as well as float32's worst kept cluster.
    assert (rescored >= exact_scores[:, -1:] - 0.05).all()
    overlap = [len(set(a) & set(b)) for a, b in zip(leaves.tolist(), exact_leaves.tolist())]
    assert sum(overlap) >= 0.8 * beam * len(QUERIES)


def test_decoder_copy_follows_weight_changes(model):
    from pyterrier_gdr.decoding import decoder_in

    assert decoder_in(model, torch.float32) is model.seq2seq.decoder
    first = decoder_in(model, torch.bfloat16)
    assert first is decoder_in(model, torch.bfloat16)
    assert next(first.parameters()).dtype == torch.bfloat16
    weight = model.seq2seq.decoder.cls.predictions.decoder.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)  # in place, as an optimizer step
    try:
        second = decoder_in(model, torch.bfloat16)
        assert second is not first
        assert torch.equal(second.cls.predictions.decoder.weight, weight.to(torch.bfloat16))
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_first_layer_states_cached_per_weights(model, tree):
    from pyterrier_gdr.decoding import CachedBertDecoder, decoder_in

    trie = TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth)
    stepper = CachedBertDecoder(model.seq2seq.decoder)
    with torch.no_grad():
        states = stepper.first_layer_states(trie)
        assert states.shape == (len(trie.children), model.seq2seq.decoder.config.hidden_size)
        assert stepper.first_layer_states(trie) is states
        # Levels computed in small chunks give the same table.
        assert torch.allclose(stepper.first_layer_states(TorchTrie.from_trie(tree.trie(), max_depth=tree.max_depth), chunk_size=7), states)
        weight = model.seq2seq.decoder.bert.embeddings.word_embeddings.weight
        original = weight.detach().clone()
        weight.add_(0.5)  # in place, as an optimizer step
        try:
            changed = stepper.first_layer_states(trie)
            assert changed is not states
            assert not torch.allclose(changed, states)
            assert len(trie.node_states) == 1  # the stale table was dropped
        finally:
            weight.copy_(original)
        # A bfloat16 copy of the decoder gets its own table beside the float32 one.
        half = CachedBertDecoder(decoder_in(model, torch.bfloat16)).first_layer_states(trie)
        assert half.dtype == torch.bfloat16
        assert len(trie.node_states) == 2
