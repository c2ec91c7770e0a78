import torch

from dpdiff.baselines.knn import KNNMemoryBank, greedy_coreset


def test_greedy_coreset_matches_plain_k_center():
    torch.manual_seed(0)
    x = torch.randn(300, 6)
    idx = greedy_coreset(x, 0.05, projection_dim=128, seed=3).tolist()
    sel = [idx[0]]
    min_d = torch.full((300,), float("inf"))
    for _ in range(len(idx) - 1):
        min_d = torch.minimum(min_d, ((x - x[sel[-1]]) ** 2).sum(1))
        sel.append(int(min_d.argmax()))
    assert sel == idx and len(idx) == 15


def test_nearest_neighbour_distances_match_cdist():
    torch.manual_seed(0)
    bank, queries = torch.randn(500, 10), torch.randn(70, 10)
    knn = KNNMemoryBank(bank, coreset_fraction=1.0)
    expected = torch.cdist(queries, bank).min(1).values
    assert torch.allclose(knn.token_distances(queries, chunk=16), expected, atol=1e-4)
    maps = knn.score_maps(torch.randn(2, 10, 3, 4))
    assert maps.shape == (2, 3, 4) and torch.all(maps >= 0)
    # a training token scores ~0, a far-away one scores high
    assert knn.token_distances(bank[:3]).max() < 1e-2
    assert knn.token_distances(bank[:1] + 100).item() > 50
