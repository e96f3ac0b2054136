"""Losses on the B x B matrices: seed formulas by hand, masks, learning, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from twinsight.errors import TwinsightError
from twinsight.losses import create_loss, list_losses

torch.set_num_threads(1)

S3 = [[1.0, 0.5, -0.2], [0.5, 1.0, 0.1], [-0.2, 0.1, 1.0]]
T3 = [[1.0, 1.0, 0.0], [1.0, 1.0, 0.3], [0.0, 0.3, 1.0]]
T3_BIN = [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
PAIRS = [(i, j) for i in range(3) for j in range(3) if i != j]


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def _offdiag(n=3):
    return ~torch.eye(n, dtype=torch.bool)


def _mean(values):
    return sum(values) / len(values)


def test_contrastive_seed_000_by_hand():
    m = 0.7
    expected = []
    for i, j in PAIRS:
        d = (1 - S3[i][j]) / 2
        t = T3[i][j]
        expected.append(0.5 * t * d**2 + 0.5 * (1 - t) * max(m - d, 0) ** 2)
    got = create_loss("contrastive", margin=m)(_t(S3), _t(T3), _offdiag())
    assert float(got) == pytest.approx(_mean(expected), rel=1e-6)
    # (S + 1) / 2 = T is the optimum with the default margin of 1
    t = torch.tensor([[1.0, 0.3], [0.3, 1.0]])
    s = (2 * t - 1).requires_grad_(True)
    create_loss("contrastive")(s, t, _offdiag(2)).backward()
    assert s.grad.abs().max() < 1e-6


def test_contrastive_euclid_seed_002_by_hand():
    m = 1.2
    expected = []
    for i, j in PAIRS:
        d = math.sqrt(2 - 2 * S3[i][j])
        y = 1.0 if T3[i][j] >= 0.5 else 0.0
        expected.append(y * d**2 + (1 - y) * max(0.0, m**2 - d**2))
    got = create_loss("contrastive-euclid", margin=m)(_t(S3), _t(T3), _offdiag())
    assert float(got) == pytest.approx(_mean(expected), rel=1e-6)


def test_mse_by_hand():
    expected = [((S3[i][j] + 1) / 2 - T3[i][j]) ** 2 for i, j in PAIRS]
    got = create_loss("mse")(_t(S3), _t(T3), _offdiag())
    assert float(got) == pytest.approx(_mean(expected), rel=1e-6)


def _bce(z, t):
    p = 1 / (1 + math.exp(-z))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_bce_seed_003_by_hand_plain_and_balanced():
    a, b = 4.0, -1.0
    loss = create_loss("bce", scale=a, bias=b, balance=False)
    expected = _mean([_bce(a * S3[i][j] + b, T3[i][j]) for i, j in PAIRS])
    assert float(loss(_t(S3), _t(T3), _offdiag())) == pytest.approx(expected, rel=1e-5)
    # balanced on binary targets: half the weight to the positive pairs, half to the negatives
    loss = create_loss("bce", scale=a, bias=b)
    pos = [_bce(a * S3[i][j] + b, 1) for i, j in PAIRS if T3_BIN[i][j] == 1]
    neg = [_bce(a * S3[i][j] + b, 0) for i, j in PAIRS if T3_BIN[i][j] == 0]
    expected = 0.5 * _mean(pos) + 0.5 * _mean(neg)
    assert float(loss(_t(S3), _t(T3_BIN), _offdiag())) == pytest.approx(expected, rel=1e-5)
    assert isinstance(loss.scale, torch.nn.Parameter) and isinstance(loss.bias, torch.nn.Parameter)
    assert loss.calibration() == {"scale": 4.0, "bias": -1.0}


def _triplets(T, delta):
    return [
        (a, p, n)
        for a in range(3)
        for p in range(3)
        for n in range(3)
        if a != p and a != n and T[a][p] > T[a][n] + delta
    ]


def test_triplet_seed_004_by_hand_all_and_hard():
    m, delta = 1.0, 0.1

    def gap(a, p, n):
        return (2 - 2 * S3[a][p]) - (2 - 2 * S3[a][n]) + m

    triplets = _triplets(T3, delta)
    assert triplets == [(0, 1, 2), (1, 0, 2), (2, 1, 0)]  # (2, 1, 0): T 0.3 > 0 + 0.1
    active = [max(gap(*t), 0) for t in triplets if gap(*t) > 0]
    assert len(active) == 2  # batch-all averages over the triplets that violate the margin
    got = create_loss("triplet", margin=m, delta=delta)(_t(S3), _t(T3), _offdiag())
    assert float(got) == pytest.approx(_mean(active), rel=1e-6)
    hard = []
    for a in range(3):
        gaps = [gap(*t) for t in triplets if t[0] == a]
        if gaps:
            hard.append(max(max(gaps), 0))
    got = create_loss("triplet", margin=m, delta=delta, mining="hard")(_t(S3), _t(T3), _offdiag())
    assert float(got) == pytest.approx(_mean(hard), rel=1e-6)


def _embeddings_and_labels(seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 3, 3])
    emb = F.normalize(torch.randn(len(labels), 6, generator=gen), dim=1)
    return emb, labels


@pytest.mark.parametrize(
    "name,pml_name", [("multi-similarity", "MultiSimilarityLoss"), ("ntxent", "NTXentLoss")]
)
def test_pml_losses_match_the_library_on_embeddings(name, pml_name):
    from pytorch_metric_learning import losses as pml

    emb, labels = _embeddings_and_labels()
    T = (labels[:, None] == labels[None]).float()
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    n1 = F.normalize(e1, dim=1)  # pml normalizes inside: same graph on both sides
    ours = create_loss(name)(n1 @ n1.T, T, _offdiag(len(labels)))
    theirs = getattr(pml, pml_name)()(e2, labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-3, atol=1e-5)


def _naive_triplet(S, T, mask, margin, delta, mining):
    """The B^3 definition with autograd all the way (reference for the fast version)."""
    D = (2 - 2 * S).clamp(min=0)
    valid = mask[:, :, None] & mask[:, None, :] & (T[:, :, None] > T[:, None, :] + delta)
    gaps = D[:, :, None] - D[:, None, :] + margin
    if mining == "hard":
        hardest = torch.where(valid, gaps, torch.full_like(gaps, -torch.inf)).flatten(1).max(1)
        has = valid.flatten(1).any(1)
        return hardest.values[has].clamp(min=0).mean()
    active = valid & (gaps > 0)
    return gaps[active].sum() / active.sum()


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_triplet_fast_version_matches_the_definition(mining):
    gen = torch.Generator().manual_seed(5)
    params = torch.randn(10, 3, generator=gen)
    T = (F.normalize(params, dim=1) @ F.normalize(params, dim=1).T + 1) / 2
    emb = F.normalize(torch.randn(10, 5, generator=gen), dim=1)
    mask = _offdiag(10)
    mask[9, :] = mask[:, 9] = False
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    fast = create_loss("triplet", margin=0.3, mining=mining)(e1 @ e1.T, T, mask)
    slow = _naive_triplet(e2 @ e2.T, T, mask, 0.3, 0.1, mining)
    assert float(fast) == pytest.approx(float(slow), rel=1e-5)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-4, atol=1e-6)


def test_pml_losses_refuse_continuous_targets():
    with pytest.raises(TwinsightError, match="needs class targets.*0.300.*contrastive, mse"):
        create_loss("ntxent")(_t(S3), _t(T3), _offdiag())


def _random_problem(n=12, continuous=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if continuous:
        params = torch.randn(n, 3, generator=gen)
        cos = F.normalize(params, dim=1) @ F.normalize(params, dim=1).T
        T = (cos + 1) / 2
    else:
        labels = torch.arange(n) % 3
        T = (labels[:, None] == labels[None]).float()
    E = torch.nn.Parameter(torch.randn(n, 8, generator=gen))
    return E, T


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_falls_on_a_tiny_problem(name):
    continuous = name in ("contrastive", "mse", "triplet")
    for targets in {False, continuous}:
        torch.manual_seed(0)
        E, T = _random_problem(continuous=targets)
        loss = create_loss(name)
        opt = torch.optim.Adam([E, *loss.parameters()], lr=0.05)
        mask = _offdiag(len(T))
        values = []
        for _ in range(40):
            e = F.normalize(E, dim=1)
            value = loss(e @ e.T, T, mask)
            opt.zero_grad()
            value.backward()
            opt.step()
            values.append(float(value.detach()))
        # continuous targets leave a floor above zero (contrastive, mse): ask for less
        factor = 0.7 if targets else 0.5
        assert values[-1] < factor * values[0], (name, targets, values[0], values[-1])


@pytest.mark.parametrize("name", list_losses())
def test_masked_pairs_do_not_count(name):
    E, T = _random_problem(n=8)
    e = F.normalize(E.detach(), dim=1)
    S = e @ e.T
    mask = _offdiag(8)
    mask[6:, :] = False  # two padded items: their rows and columns are out
    mask[:, 6:] = False
    loss = create_loss(name)
    expected = loss(S[:6, :6], T[:6, :6], _offdiag(6))
    S2, T2 = S.clone(), T.clone()
    S2[6:, :] = S2[:, 6:] = -0.9  # garbage in the masked rows changes nothing
    S2[6:, 6:] = 1.0
    T2[6:, :6] = T2[:6, 6:] = 1.0
    assert float(loss(S2, T2, mask)) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)


def test_gradient_flows_to_similarities_only_through_mask():
    S = _t(S3).requires_grad_(True)
    mask = _offdiag()
    mask[0, 2] = mask[2, 0] = False
    create_loss("mse")(S, _t(T3), mask).backward()
    assert S.grad[0, 2] == 0 and S.grad[2, 0] == 0 and S.grad[0, 1] != 0


def test_empty_mask_gives_zero():
    for name in list_losses():
        S = _t(S3).requires_grad_(True)
        value = create_loss(name)(S, _t(T3_BIN), torch.zeros(3, 3, dtype=torch.bool))
        assert float(value) == 0.0, name


def test_unknown_names_options_and_shapes():
    with pytest.raises(TwinsightError, match="unknown loss 'hinge'.*contrastive.*triplet.*ntxent"):
        create_loss("hinge")
    with pytest.raises(TwinsightError, match=r"no option\(s\) \['marign'\].*margin"):
        create_loss("contrastive", marign=1)
    with pytest.raises(TwinsightError, match="margin must be > 0"):
        create_loss("triplet", margin=0)
    with pytest.raises(TwinsightError, match="mining must be 'all' or 'hard'"):
        create_loss("triplet", mining="semi")
    with pytest.raises(TwinsightError, match=r"T has shape \(2, 2\)"):
        create_loss("mse")(_t(S3), torch.zeros(2, 2), None)
    with pytest.raises(TwinsightError, match="square"):
        create_loss("mse")(torch.zeros(2, 3), torch.zeros(2, 3), None)
