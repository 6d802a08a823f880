"""QSTModel and SideNetwork: base output preserved at start, only side weights train, shapes."""
import pytest
import torch

from pyterrier_gdr.reader import DOWNSAMPLE_KINDS, QSTConfig, QSTModel, SideNetwork
from pyterrier_gdr.reader.model import IGNORE_INDEX


def _batch(vocab_size, *, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab_size, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0  # left padding in the first row
    return input_ids, attention_mask


def test_untrained_qst_equals_base_logits(tiny_base):
    input_ids, attention_mask = _batch(tiny_base.config.vocab_size)
    model = QSTModel(tiny_base, qst=QSTConfig(r=4))
    with torch.no_grad():
        expected = tiny_base(input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids, attention_mask).logits
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("downsample", DOWNSAMPLE_KINDS)
def test_untrained_equals_base_for_each_downsample(llama_base, downsample):
    input_ids, attention_mask = _batch(llama_base.config.vocab_size)
    model = QSTModel(llama_base, qst=QSTConfig(r=4, downsample=downsample))
    with torch.no_grad():
        expected = llama_base(input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids, attention_mask).logits
    assert torch.equal(actual, expected)


def test_base_reader_equals_base_logits(tiny_base):
    input_ids, attention_mask = _batch(tiny_base.config.vocab_size)
    with torch.no_grad():
        expected = tiny_base(input_ids, attention_mask=attention_mask).logits
        actual = QSTModel(tiny_base)(input_ids, attention_mask).logits
    assert torch.equal(actual, expected)


def test_side_network_shape(tiny_base):
    side = SideNetwork(tiny_base, QSTConfig(r=4))
    config = tiny_base.config
    assert len(side.decoder.layers) == config.num_hidden_layers
    assert side.hidden_size == config.hidden_size // 4
    assert side.decoder_config.intermediate_size == config.intermediate_size // 4
    assert side.decoder.embed_tokens is None
    assert len(side.downsample) == config.num_hidden_layers
    assert side.upsample.in_features == config.hidden_size // 4
    assert side.upsample.out_features == config.hidden_size


def test_gates_start_at_half_and_alpha_at_one(llama_base):
    side = SideNetwork(llama_base, QSTConfig(r=4))
    assert torch.equal(torch.sigmoid(side.gate), torch.full_like(side.gate, 0.5))
    assert torch.equal(side.alpha, torch.ones_like(side.alpha))


def test_same_seed_builds_same_side(llama_base):
    first = SideNetwork(llama_base, QSTConfig(r=4, seed=3)).state_dict()
    second = SideNetwork(llama_base, QSTConfig(r=4, seed=3)).state_dict()
    other = SideNetwork(llama_base, QSTConfig(r=4, seed=4)).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def _train_steps(model, input_ids, attention_mask, steps):
    labels = input_ids.clone()
    labels[:, :8] = IGNORE_INDEX
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss(input_ids, attention_mask, labels).backward()
        optimizer.step()
    model.eval()


def test_training_changes_only_side_parameters(tiny_base):
    input_ids, attention_mask = _batch(tiny_base.config.vocab_size)
    model = QSTModel(tiny_base, qst=QSTConfig(r=4))
    # bitsandbytes repacks 4-bit weights for its CPU kernel on the first inference call; run one
    # first so the snapshot holds the packed layout and a layout change is not taken for training.
    with torch.no_grad():
        model(input_ids, attention_mask)
    before = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}
    before.update({name: tensor.detach().clone() for name, tensor in model.named_buffers()})

    _train_steps(model, input_ids, attention_mask, steps=2)

    after = dict(model.named_parameters())
    after.update(dict(model.named_buffers()))
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed, "no parameter changed"
    assert all(name.startswith("side.") for name in changed), sorted(changed)
    assert "side.alpha" in changed
    assert any(name.startswith("side.decoder.layers.") for name in changed)
    assert any(name.startswith("side.downsample.") for name in changed)


def test_no_gradient_reaches_base(llama_base):
    input_ids, attention_mask = _batch(llama_base.config.vocab_size)
    model = QSTModel(llama_base, qst=QSTConfig(r=4))
    labels = input_ids.clone()
    model.loss(input_ids, attention_mask, labels).backward()
    assert all(not parameter.requires_grad for parameter in llama_base.parameters())
    assert all(parameter.grad is None for parameter in llama_base.parameters())
    assert model.side.alpha.grad is not None


def test_base_hidden_states_reach_side_detached(llama_base):
    input_ids, attention_mask = _batch(llama_base.config.vocab_size)
    model = QSTModel(llama_base, qst=QSTConfig(r=4))
    seen = []
    model.side.downsample[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(input_ids, attention_mask)
    assert len(seen) == 1
    assert seen[0].grad_fn is None
    assert not seen[0].requires_grad


def test_trained_side_changes_logits(llama_base):
    input_ids, attention_mask = _batch(llama_base.config.vocab_size)
    model = QSTModel(llama_base, qst=QSTConfig(r=4))
    _train_steps(model, input_ids, attention_mask, steps=3)
    with torch.no_grad():
        expected = llama_base(input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids, attention_mask).logits
    assert not torch.allclose(actual, expected)


def test_loss_without_labels_raises(llama_base):
    input_ids, attention_mask = _batch(llama_base.config.vocab_size)
    model = QSTModel(llama_base, qst=QSTConfig(r=4))
    with pytest.raises(ValueError, match="no position"):
        model.loss(input_ids, attention_mask, torch.full_like(input_ids, IGNORE_INDEX))


def test_loss_counts_answer_tokens_only(llama_base):
    input_ids, attention_mask = _batch(llama_base.config.vocab_size)
    model = QSTModel(llama_base)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -3:] = input_ids[:, -3:]
    with torch.no_grad():
        logits = llama_base(input_ids, attention_mask=attention_mask).logits.float()
        expected = torch.nn.functional.cross_entropy(logits[:, -4:-1].reshape(-1, logits.shape[-1]),
                                                     input_ids[:, -3:].reshape(-1))
        actual = model.loss(input_ids, attention_mask, labels)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_pooling_needs_divisible_width(llama_base):
    with pytest.raises(ValueError, match="multiple of the side hidden size"):
        SideNetwork(llama_base, QSTConfig(r=3, downsample="max_pool"))


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r must be a positive integer"),
    ({"downsample": "conv"}, "downsample='conv' is invalid"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"adapter_activation": "nope"}, "not a transformers activation"),
])
def test_qst_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QSTConfig(**kwargs)


def test_qst_config_round_trips_through_dict():
    config = QSTConfig(r=8, downsample="lora", dropout=0.1)
    assert QSTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown QSTConfig fields"):
        QSTConfig.from_dict({"rank": 3})
