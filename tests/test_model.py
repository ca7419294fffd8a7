import math

import numpy as np
import pytest
import torch

from ltvrec.config import EVENT_TYPES
from models.sasrec import ModelConfig, SeqRecModel, ziln_expected_value, ziln_loss

N_EVENT_TYPES = len(EVENT_TYPES) + 1  # codes 1.. plus padding


def config(**kw) -> ModelConfig:
    return ModelConfig(n_event_types=N_EVENT_TYPES, **kw)


def make_model(**kw):
    torch.manual_seed(0)
    model = SeqRecModel(config(n_items=30, n_ltv_features=4, max_len=8, d_model=16, n_heads=2, n_layers=2, **kw))
    return model.eval()


def test_shapes():
    model = make_model(ltv_user_dim=8)
    items = torch.randint(1, 30, (3, 8))
    types = torch.randint(1, N_EVENT_TYPES, (3, 8))
    h = model.encode(items, types)
    assert h.shape == (3, 8, 16)
    logits = model.item_logits(h)
    assert logits.shape == (3, 8, 30) and torch.isinf(logits[..., 0]).all()
    logit, mu, sigma = model.ltv_params(h[:, -1], torch.zeros(3, 4))
    assert logit.shape == mu.shape == sigma.shape == (3,) and (sigma > 0).all()


def test_future_items_never_influence_past_positions():
    model = make_model()
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    types = torch.tensor([[0, 0, 1, 1, 3, 1, 2, 3]])
    changed = items.clone()
    changed[0, 5:] = torch.tensor([20, 21, 22])
    a, b = model.encode(items, types), model.encode(changed, types)
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6)
    assert not torch.allclose(a[0, 5:], b[0, 5:])


def test_padding_is_ignored_and_finite():
    model = make_model()
    items = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    h = model.encode(items, types)
    assert torch.isfinite(h).all()
    # an all-padding row (a customer with no usable history) must stay finite too
    empty = model.encode(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    assert torch.isfinite(empty).all()


def test_time_gap_buckets_hand_computed():
    from models.sasrec import TIME_GAP_BUCKETS, time_gap_buckets

    ts = torch.tensor([[0, 0, 1_000, 1_000, 1_030, 1_030 + 3 * 60, 1_210 + 7 * 60, 10**9]])
    valid = torch.tensor([[False, False, True, True, True, True, True, True]])
    # padding 0; first real event 1; same second 2; 30 s -> 3 + floor(log2(1.5)) = 3; 3 min -> 3 + 2 = 5;
    # 7 min -> 3 + 3 = 6; ~31 years -> the last bucket
    assert time_gap_buckets(ts, valid).tolist() == [[0, 0, 1, 2, 3, 5, 6, TIME_GAP_BUCKETS - 1]]


def test_time_gaps_are_embedded_causally_and_required():
    model = make_model(time_gaps=True)
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    types = torch.tensor([[0, 0, 1, 1, 3, 1, 2, 3]])
    ts = torch.tensor([[0, 0, 100, 100, 5_000, 90_000, 90_000, 400_000]])
    later = ts.clone()
    later[0, 6:] += 10**7  # the last two events happen months later
    a, b = model.encode(items, types, ts=ts), model.encode(items, types, ts=later)
    assert torch.allclose(a[0, :6], b[0, :6], atol=1e-6)  # a future gap never reaches a past position
    assert not torch.allclose(a[0, 6:], b[0, 6:])  # the gaps are read
    with pytest.raises(ValueError, match="time_gaps"):
        model.encode(items, types)


def test_ziln_loss_hand_computed():
    logit = torch.tensor([0.0, 0.0])
    mu = torch.tensor([0.0, 1.0])
    sigma = torch.tensor([1.0, 2.0])
    y = torch.tensor([0.0, math.e])
    # example 1: y = 0 -> BCE(0, target 0) = log 2; example 2: log 2 + lognormal NLL
    nll = 1.0 + math.log(2.0) + 0.5 * math.log(2 * math.pi) + (1.0 - 1.0) ** 2 / 8
    expected = (math.log(2) + math.log(2) + nll) / 2
    assert ziln_loss(logit, mu, sigma, y).item() == pytest.approx(expected, abs=1e-6)
    masked = ziln_loss(logit, mu, sigma, y, mask=torch.tensor([1.0, 0.0]))
    assert abs(masked.item() - math.log(2)) < 1e-6


def test_ziln_expectation():
    p, ev = ziln_expected_value(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.5]))
    assert abs(p.item() - 0.5) < 1e-7
    assert abs(ev.item() - 0.5 * math.exp(1.0 + 0.125)) < 1e-5


def test_warm_start_maps_item_embeddings_by_id():
    from models.checkpoint import warm_start

    old = make_model()
    ckpt = {"model": old.state_dict(), "item_ids": [f"i{i}" for i in range(1, 30)]}
    torch.manual_seed(1)
    new = SeqRecModel(config(n_items=4, n_ltv_features=4, max_len=8, d_model=16, n_heads=2, n_layers=2)).eval()
    fresh_row = new.item_emb.weight[3].detach().clone()
    carried = warm_start(new, ckpt, ["i5", "i2", "brand-new"])
    assert carried["items_carried"] == 2 and carried["items_new"] == 1
    assert torch.equal(new.item_emb.weight[1], old.item_emb.weight[5])
    assert torch.equal(new.item_emb.weight[2], old.item_emb.weight[2])
    assert torch.equal(new.item_emb.weight[3], fresh_row)  # unknown item keeps its initialisation
    assert torch.equal(new.blocks[0].qkv.weight, old.blocks[0].qkv.weight)


def test_a_new_item_starts_from_the_known_items_with_the_closest_text():
    from models.checkpoint import warm_start

    torch.manual_seed(0)
    old = SeqRecModel(config(n_items=4, n_ltv_features=4, max_len=8, d_model=16, text_dim=3)).eval()
    ckpt = {"model": old.state_dict(), "item_ids": ["a", "b", "c"]}
    new = SeqRecModel(config(n_items=6, n_ltv_features=4, max_len=8, d_model=16, text_dim=3)).eval()
    # this run's texts: "new" reads like "a" (and a little like "b"), "odd" like nothing known
    new.item_text.copy_(torch.tensor([[0, 0, 0], [1, 0, 0], [0.6, 0.8, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 0, -1.0]]))
    fresh = new.item_emb.weight[5].detach().clone()
    carried = warm_start(new, ckpt, ["a", "b", "c", "new", "odd"])
    assert carried["items_new"] == 2 and carried["items_new_from_text"] == 1
    rows = old.item_emb.weight
    sims = torch.tensor([0.8, 0.8 * 0.6 + 0.6 * 0.8, 0.6])  # new's cosine to a, b and c (unit rows)
    expected = (sims[:, None] * rows[1:4]).sum(0) / sims.sum()
    assert torch.allclose(new.item_emb.weight[4], expected, atol=1e-6)
    assert torch.equal(new.item_emb.weight[5], fresh)  # no known item's text points its way: fresh


def test_item_text_gives_cold_items_a_representation():
    torch.manual_seed(0)
    model = SeqRecModel(config(n_items=5, n_ltv_features=4, max_len=8, d_model=16, text_dim=6)).eval()
    model.item_text.copy_(torch.randn(5, 6))
    model.item_text[0] = 0
    with torch.no_grad():
        model.item_emb.weight.zero_()  # as if no item had interactions
    vectors = model.item_vectors()
    assert torch.allclose(vectors, model.text_proj(model.item_text))
    assert vectors[1:].norm(dim=1).min() > 0 and vectors[0].abs().sum() == 0
    h = model.encode(torch.tensor([[0, 0, 1, 2]]), torch.tensor([[0, 0, 1, 1]]))
    assert torch.isfinite(model.item_logits(h)[..., 1:]).all()


def test_sampled_softmax_with_all_items_and_uniform_q_equals_full_softmax():
    from models.sasrec import sampled_softmax_loss

    torch.manual_seed(0)
    n_items, d = 12, 8
    hidden, items = torch.randn(5, d), torch.randn(n_items, d)
    targets = torch.tensor([1, 4, 4, 7, 11])
    log_q = torch.full((n_items,), -3.0)
    negatives = torch.arange(1, n_items)  # every real item (the target itself is masked as an accidental hit)
    full_logits = hidden @ items.T
    full_logits[:, 0] = float("-inf")
    full = torch.nn.functional.cross_entropy(full_logits, targets)
    assert sampled_softmax_loss(hidden, targets, items, negatives, log_q).item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("chunk_rows", [3, 256])
def test_chunked_full_softmax_matches_cross_entropy_in_value_and_gradients(chunk_rows):
    from models.sasrec import full_softmax_loss

    torch.manual_seed(0)
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    items = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 4, 4, 7, 11, 2, 2, 9, 10, 3])
    loss = full_softmax_loss(hidden, targets, items, chunk_rows)
    grads = torch.autograd.grad(2.5 * loss, [hidden, items])
    logits = hidden @ items.T
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)  # padding never wins
    expected = torch.nn.functional.cross_entropy(logits, targets)
    expected_grads = torch.autograd.grad(2.5 * expected, [hidden, items])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert grads[1][0].abs().max() == 0  # the padding row gets no gradient


def test_logq_correction_favours_rarely_sampled_items():
    from models.sasrec import sampled_softmax_loss

    hidden, items = torch.ones(1, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    negatives = torch.tensor([2])
    common = sampled_softmax_loss(hidden, torch.tensor([1]), items, negatives, torch.log(torch.tensor([1.0, 0.9, 0.1])))
    rare = sampled_softmax_loss(hidden, torch.tensor([1]), items, negatives, torch.log(torch.tensor([1.0, 0.1, 0.9])))
    assert rare < common  # a target that is rarely sampled as a negative gets a larger corrected logit


def test_training_pass_uses_sampled_softmax_when_negatives_are_given():
    model = make_model(ltv_user_dim=8)  # eval mode: no dropout, so the two losses are comparable
    batch = {
        "items": torch.randint(1, 30, (4, 8)), "types": torch.randint(1, N_EVENT_TYPES, (4, 8)), "targets": torch.randint(0, 30, (4, 8)),
        "ltv_items": torch.randint(1, 30, (4, 8)), "ltv_types": torch.randint(1, N_EVENT_TYPES, (4, 8)), "ltv_feats": torch.zeros(4, 4),
        "ltv_label": torch.tensor([0.0, 1.0, 2.0, 0.0]), "ltv_mask": torch.ones(4),
    }
    full = model(batch)["rec_loss"]
    sampled = model({**batch, "neg_items": torch.randint(1, 30, (16,)), "log_q": torch.full((30,), -3.4)})["rec_loss"]
    assert torch.isfinite(full) and torch.isfinite(sampled) and sampled < full  # 17 candidates vs 29
    sampled.backward()
    assert model.item_emb.weight.grad is not None


def test_value_aware_ranking_is_probability_times_price_over_unseen_items():
    import numpy as np

    from models.ranking import model_topk

    model = make_model()
    history = [np.array([3, 4, 5]), np.array([7])]
    types = [np.array([1, 1, 3]), np.array([3])]
    price = np.linspace(0.0, 29.0, 30)
    price[10] = 0.0  # an item without a price is never recommended by value
    top, scores, _ = model_topk(model, history, types, k=5, item_value=price)
    x = torch.tensor([[0] * 5 + [3, 4, 5], [0] * 7 + [7]])
    t = torch.tensor([[0] * 5 + [1, 1, 3], [0] * 7 + [3]])
    logits = model.item_logits(model.encode(x, t)[:, -1])
    for row, seen in enumerate(history):
        logits[row, torch.as_tensor(seen)] = float("-inf")
        expected = torch.softmax(logits[row], dim=0).detach().numpy() * price
        expected[10] = -1.0
        order = np.argsort(-expected)[:5]
        assert top[row].tolist() == order.tolist()
        assert scores[row] == pytest.approx(expected[order], rel=1e-4)
        assert not set(top[row]) & set(seen.tolist()) and 10 not in top[row]


def test_ltv_sigma_is_bounded():
    bounded = make_model(ltv_sigma_max=2.0)
    with torch.no_grad():
        bounded.ltv_head[-1].bias.fill_(50.0)  # a head pushed far out of range
        h, feats = torch.zeros(3, 16), torch.zeros(3, 4)
        _, _, sigma = bounded.ltv_params(h, feats)
        assert ((sigma > 0.05) & (sigma <= 2.0)).all()


def test_dropping_leading_padding_columns_changes_nothing():
    """Scoring pads a chunk only to its longest history: the last hidden state must equal full-width padding's."""
    from models.data import pad_left

    torch.manual_seed(0)
    model = SeqRecModel(config(n_items=30, n_ltv_features=3, max_len=12, d_model=16, dropout=0.0)).eval()
    seqs = [np.array([3, 4, 5]), np.array([7]), np.array([1, 2, 3, 4, 9])]
    types = [np.ones(len(s), dtype=np.int64) for s in seqs]
    with torch.no_grad():
        full = model.encode(torch.as_tensor(pad_left(seqs, 12)), torch.as_tensor(pad_left(types, 12)))
        short = model.encode(torch.as_tensor(pad_left(seqs, 5)), torch.as_tensor(pad_left(types, 5)))
    torch.testing.assert_close(short, full[:, -5:], rtol=1e-5, atol=1e-5)


def test_last_only_gives_the_last_position_of_the_full_pass():
    from models.data import pad_left

    torch.manual_seed(1)
    model = SeqRecModel(config(n_items=30, n_ltv_features=3, max_len=10, d_model=16, n_layers=3, dropout=0.0)).eval()
    seqs = [np.array([3, 4, 5]), np.array([7]), np.arange(1, 11)]
    x = torch.as_tensor(pad_left(seqs, 10))
    t = torch.ones_like(x) * (x > 0)
    with torch.no_grad():
        full, last = model.encode(x, t), model.encode(x, t, last_only=True)
    assert last.shape == (3, 1, 16)
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_chunked_full_softmax_without_gradients_gives_the_same_loss():
    from models.sasrec import full_softmax_loss

    torch.manual_seed(0)
    hidden, items = torch.randn(10, 8, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64)
    targets = torch.randint(1, 12, (10,))
    with torch.no_grad():
        loss = full_softmax_loss(hidden, targets, items, 4)
    logits = hidden @ items.T
    logits[:, 0] = float("-inf")
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-12)
