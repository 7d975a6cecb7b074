"""Weight averaging: the update rule, BatchNorm buffers, swapping the average in and out, and its state."""

import torch
from torch import nn

from fastrobust.engine.averaging import WeightAverage


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_update_is_the_exponential_average_with_its_warm_up():
    net = _net()
    wa = WeightAverage(net, tau=0.9, warmup=10)
    start = net[0].weight.detach().clone()
    assert wa.decay() == 0.1   # (1 + 0) / (10 + 0): early on the average follows the model
    with torch.no_grad():
        net[0].weight.add_(1.0)
    wa.update(net)
    assert torch.allclose(wa.state["0.weight"], 0.1 * start + 0.9 * (start + 1.0))
    wa.updates = 1000
    assert wa.decay() == 0.9   # then tau
    assert WeightAverage(net, tau=0.99, warmup=0).decay() == 0.99


def test_batchnorm_statistics_are_averaged_and_counters_copied():
    net = _net()
    wa = WeightAverage(net, tau=0.5, warmup=0)
    net.train()(torch.randn(8, 4) * 3 + 1)
    wa.update(net)
    bn = net[1]
    assert torch.allclose(wa.state["1.running_mean"], 0.5 * torch.zeros(3) + 0.5 * bn.running_mean)
    assert wa.state["1.num_batches_tracked"] == bn.num_batches_tracked == 1


def test_swapped_into_evaluates_the_average_and_restores_the_model():
    net = _net()
    wa = WeightAverage(net, tau=0.5, warmup=0)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].bias.fill_(3.0)
    wa.update(net)
    x = torch.randn(5, 4)
    net.eval()
    with wa.swapped_into(net) as averaged:
        assert torch.allclose(averaged[0].bias, (own["0.bias"] + 3.0) / 2)
        out = averaged(x)
    assert torch.equal(net[0].bias, torch.full((3,), 3.0))
    assert not torch.equal(net(x), out)


def test_state_round_trip_is_exact():
    net = _net()
    wa = WeightAverage(net, tau=0.9)
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.mul_(1.1)
        wa.update(net)
    other = WeightAverage(_net(), tau=0.5)
    other.load_state_dict(wa.state_dict())
    assert other.updates == 3 and other.tau == 0.9
    assert all(torch.equal(other.state[k], wa.state[k]) for k in wa.state)
