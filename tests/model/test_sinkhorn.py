import numpy as np
import ot
import pytest
import torch

from dpdiff.model.sinkhorn import entropic_ot_loss, sinkhorn_log


@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_sinkhorn_plan_matches_pot(eps):
    rng = np.random.default_rng(0)
    costs = rng.random((3, 40, 5))
    ours = sinkhorn_log(torch.from_numpy(costs), epsilon=eps, num_iters=2000).numpy()
    for b in range(costs.shape[0]):
        a = np.full(40, 1 / 40)
        bb = np.full(5, 1 / 5)
        ref = ot.sinkhorn(a, bb, costs[b], reg=eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-12)
        np.testing.assert_allclose(ours[b], ref, atol=1e-4 / 40)
        value_ref = ot.sinkhorn2(a, bb, costs[b], reg=eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-12)
        assert abs((ours[b] * costs[b]).sum() - float(value_ref)) < 1e-4


def test_sinkhorn_marginals_and_batch_equivalence():
    torch.manual_seed(0)
    cost = torch.rand(4, 30, 3, dtype=torch.float64) * 10
    plan = sinkhorn_log(cost, epsilon=0.1, num_iters=5000)
    # the last update fits the column marginals exactly; rows converge
    assert torch.allclose(plan.sum(1), torch.full((4, 3), 1 / 3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(plan.sum(2), torch.full((4, 30), 1 / 30, dtype=torch.float64), atol=1e-6)
    single = sinkhorn_log(cost[2], epsilon=0.1, num_iters=5000)
    assert torch.allclose(single, plan[2])


def test_entropic_ot_loss_value_and_gradient_match_pot():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(1, 20, 4)), dtype=torch.float64)
    p = torch.tensor(rng.normal(size=(1, 3, 4)), dtype=torch.float64, requires_grad=True)
    cost = (x.unsqueeze(2) - p.unsqueeze(1)).pow(2).sum(-1)
    eps = 0.5
    loss = entropic_ot_loss(cost, epsilon=eps, num_iters=3000)
    a, b = np.full(20, 1 / 20), np.full(3, 1 / 3)
    plan = ot.sinkhorn(a, b, cost[0].detach().numpy(), reg=eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    ref = (plan * cost[0].detach().numpy()).sum() + eps * (plan * np.log(plan)).sum()
    assert abs(loss.item() - ref) < 1e-4
    loss.backward()
    # envelope theorem: d/dp <T*, C(p)> with T* fixed; compare to a finite difference of the optimum value
    h = 1e-5
    with torch.no_grad():
        p2 = p.detach().clone()
        p2[0, 1, 2] += h
        c2 = (x.unsqueeze(2) - p2.unsqueeze(1)).pow(2).sum(-1)
        l2 = entropic_ot_loss(c2, epsilon=eps, num_iters=3000)
    fd = (l2.item() - loss.item()) / h
    assert abs(fd - p.grad[0, 1, 2].item()) < 1e-3
