"""The FastAT Benchmark's leaders (methods/leaders.py): each rule checked on a small model, beyond the contract."""

import warnings

import pytest
import torch
from torch.nn import functional as F

from fastrobust.methods import Batch
from helpers import EPS, ForwardCounter, make_method, run_epochs, synthetic


def test_gradalign_regulariser_is_one_minus_the_mean_cosine_and_reaches_the_weights():
    from fastrobust.methods.leaders import _cosine

    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [3.0, 1.0]])
    assert _cosine(a, b).item() == pytest.approx(0.5)     # (1 + 0) / 2: the zero gradient is left out
    assert _cosine(torch.zeros(2, 3), torch.ones(2, 3)).item() == 1.0   # none left: no regularisation
    x, y = synthetic(24)
    grads = {}
    for lam in (0.0, 0.2):   # the same random draws: the weight step differs only by the regulariser
        model, method, _, _ = make_method("gradalign", lam=lam)
        torch.manual_seed(5)
        method.train_batch(model, Batch(x, y, EPS, EPS), lambda loss, wrt=None: loss.backward())
        grads[lam] = [p.grad.clone() for p in model.parameters()]
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(grads[0.0], grads[0.2]))


def test_gradalign_trains_on_fgsm_from_x():
    model, method, step, _ = make_method("gradalign", lam=0.0)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x, y = synthetic(24)
    x_req = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)[0]
    seen.clear()
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    assert torch.allclose(seen[0], x) and torch.allclose(seen[1], expected)


def counted(model):
    fwd, bwd = ForwardCounter(model), ForwardCounter(model, backward=True)
    return lambda: fwd.examples / 3 + 2 * bwd.examples / 3


def test_zerograd_quantile_is_torchs_and_the_small_components_take_no_step():
    from fastrobust.methods.leaders import _quantile_rows

    a = torch.rand(5, 3, 7, 7)
    for q in (0.0, 0.35, 0.5, 0.99):
        assert torch.allclose(_quantile_rows(a, q).flatten(), torch.quantile(a.flatten(1), q, dim=1))
    model, method, step, _ = make_method("zerograd")
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x, y = synthetic(24)
    x = x * 0.5 + 0.25   # away from the pixel box, so the start is not clipped
    method.train_batch(model, Batch(x, y, EPS, 2 * EPS), step)
    start, x_adv = seen
    moved = (x_adv - start).abs() > 1e-7
    share_still = 1 - moved.flatten(1).float().mean(1)
    assert (share_still >= 0.35 - 1 / 16).all()        # at least the q-quantile of 16 components stays
    assert (x_adv - x).abs().max() <= EPS + 1e-6        # projected onto the eps-ball


def test_nuat_lambda_rises_linearly_and_the_attack_alternates():
    model, method, step, _ = make_method("nuat", epochs=4, lam_max=4.0)
    assert method.lam_now() == 0.0
    for epoch in range(3):
        method.on_epoch_end(epoch)
        assert method.lam_now() == pytest.approx(4.0 * (epoch + 1) / 4)
    assert method.state() == {"lambda": pytest.approx(2.0)}
    x, y = synthetic(24)
    count = counted(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert method.train_batch(model, Batch(x, y, EPS, EPS), step).passes == pytest.approx(3 * 24) == count()


def test_nuat_regulariser_is_the_batch_nuclear_norm():
    from fastrobust.methods.leaders import NuAT

    a, b = torch.randn(8, 3), torch.randn(8, 3)
    assert NuAT.reg(None, a, b).item() == pytest.approx(torch.linalg.svdvals(b - a).sum().item(), rel=1e-5)


def test_gat_attacks_in_eval_mode_and_trains_on_clean_ce_plus_the_softmax_distance():
    model, method, step, _ = make_method("gat")
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    x, y = synthetic(24)
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert modes == [True, False, True]     # clean (train), attack (eval), x_adv (train)


@pytest.mark.parametrize("stride", [0, 1])
def test_fgsm_rs_cs_constraint_applies_in_its_epochs_and_is_counted(stride):
    model, method, step, _ = make_method("fgsm-rs-cs", epochs=4, stride=stride)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        count = counted(model)
        states, passes = run_epochs(model, method, step, 4)
        assert sum(passes) * 48 == pytest.approx(count())
    on = [stride < t < 4 - stride and t > 0 for t in range(4)]
    assert passes == [pytest.approx(8 / 3 if o else 2) for o in on]
    assert states[0]["start_loss"] > 0


def test_fgsm_rs_cs_constraint_sign():
    """Above the last epoch's mean by more than gamma: + w l; below: - w l; within: nothing."""
    model, method, _, _ = make_method("fgsm-rs-cs", epochs=4, stride=0, gamma=0.0)
    x, y = synthetic(24)
    method.epoch = 1
    grads = {}
    for prev in (-1.0, None, 10.0):
        torch.manual_seed(3)
        method.cs.prev = prev
        model.zero_grad()
        method.train_batch(model, Batch(x, y, EPS, EPS), lambda loss, wrt=None: loss.backward())
        grads[prev] = next(model.parameters()).grad.clone()
    # the three differ by the start's gradient: +g (above), 0, -g (below): symmetric around the unconstrained one
    assert torch.allclose(grads[-1.0] - grads[None], grads[None] - grads[10.0], atol=1e-6)
    assert not torch.allclose(grads[-1.0], grads[None])


def test_liet_refreshes_its_label_information_and_counts_it():
    model, method, step, _ = make_method("liet", refresh=2)
    count = counted(model)
    x, y = synthetic(24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        passes = [method.train_batch(model, Batch(x, y, EPS, EPS), step).passes for _ in range(3)]
        assert sum(passes) == pytest.approx(count())
    assert passes == [pytest.approx(24 * 8 / 3 + 3), pytest.approx(24 * 8 / 3), pytest.approx(24 * 8 / 3 + 3)]
    method.on_epoch_end(0)                  # each epoch starts with a refresh
    assert method.in_epoch == 0 and method.lam_now() == pytest.approx(100 * 2 / 3)


def test_liet_targets_and_js():
    from fastrobust.methods.leaders import _js

    model, method, _, _ = make_method("liet")
    t = method._targets(torch.tensor([0, 2, 1]), 4)
    assert torch.allclose(t.sum(1), torch.ones(3)) and torch.allclose(t[[0, 1, 2], [0, 2, 1]], torch.full((3,), 0.4))
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    p, q = a.softmax(1), b.softmax(1)
    m = (p + q) / 2
    expected = ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean() / 2
    assert _js(a, b).item() == pytest.approx(expected.item(), rel=1e-5) and _js(a, a).item() == pytest.approx(0, abs=1e-6)


def test_uap_moves_along_the_momentum_and_cuap_only_the_classes_present():
    model, method, step, _ = make_method("fgsm-cuap")
    x, y = synthetic(24)
    keep = y != 2                                   # class 2 absent from the minibatch
    method.train_batch(model, Batch(x[keep], y[keep], EPS, EPS), step)
    u0, m0 = method.u.clone(), method.momentum.clone()
    assert method.u.shape == (3, 1, 4, 4) and (method.u.abs() <= 1.25 * EPS + 1e-7).all()
    assert (m0[2] == 0).all() and (m0[:2] != 0).any()
    method.train_batch(model, Batch(x[keep], y[keep], EPS, EPS), step)
    assert torch.equal(method.u[2], u0[2])          # untouched
    moved = method.u[:2] - u0[:2]
    expected = (u0[:2] + 1.25 * EPS * method.momentum[:2].sign()).clamp(-1.25 * EPS, 1.25 * EPS) - u0[:2]
    assert torch.allclose(moved, expected)
    model, single, step, _ = make_method("fgsm-uap")
    single.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert single.u.shape == (1, 1, 4, 4)           # one perturbation for every example


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_fuap_picks_each_examples_perturbation_by_the_heads_argmax_and_trains_the_head():
    """The head sees the penultimate features (the input of the model's last nn.Linear) of x + noise; its hidden
    argmax names the perturbation; only the perturbations chosen move; the head takes one Adam step per batch;
    passes are 3 per example (one forward more than FGSM-UAP); head and Adam state resume exactly."""
    from fastrobust.methods.leaders import FGSMFUAP
    model, method, step, _ = make_method("fgsm-fuap", uaps=6)
    x, y = synthetic(24)
    features = []
    model.net[3].register_forward_pre_hook(lambda m, args: features.append(args[0].detach().clone()))
    count = counted(model)
    out = method.train_batch(model, Batch(x, y, EPS, EPS), step)
    assert out.passes == pytest.approx(count()) == pytest.approx(24 * 3)
    assert method.u.shape == (6, 1, 4, 4) and (method.u.abs() <= 1.25 * EPS + 1e-7).all()
    head0 = [p.detach().clone() for p in method.head.parameters()]
    u0 = method.u.clone()
    features.clear()
    method.train_batch(model, Batch(x, y, EPS, EPS), step)
    with torch.no_grad():      # the choice made in this batch: the argmax of the head before its step
        chosen = F.linear(features[0].flatten(1), head0[0], head0[1]).argmax(1)
    untouched = torch.ones(6, dtype=torch.bool)
    untouched[chosen] = False
    assert torch.equal(method.u[untouched], u0[untouched]) and not torch.equal(method.u[~untouched], u0[~untouched])
    assert not torch.equal(head0[0], method.head[0].weight)          # the head learned
    fresh = FGSMFUAP(method.ctx, **FGSMFUAP.resolve_params({"uaps": 6}))
    fresh.load_state_dict(method.state_dict())
    for a, b in zip(fresh.head.parameters(), method.head.parameters()):
        assert torch.equal(a, b)
    assert fresh.head_opt.state_dict()["state"][0]["step"] == method.head_opt.state_dict()["state"][0]["step"]


def test_fuap_keeps_one_head_in_every_process_and_refuses_a_model_without_a_linear_layer():
    """Under torchrun the head's start and gradients are the processes' mean: two processes of the same data
    (all_reduce_sum doubling) train the head exactly as one process does."""
    from torch import nn
    heads = []
    for reduce in (None, lambda t: 2 * t):
        model, method, step, _ = make_method("fgsm-fuap", all_reduce_sum=reduce)
        for b in range(2):
            method.train_batch(model, Batch(*synthetic(24, seed=b), EPS, EPS), step)
        heads.append([p.detach() for p in method.head.parameters()])
    for a, b in zip(*heads):
        assert torch.allclose(a, b, atol=1e-6)
    _, method, step, _ = make_method("fgsm-fuap")
    conv_only = nn.Sequential(nn.Conv2d(1, 3, 4), nn.Flatten())
    with pytest.raises(Exception, match="no nn.Linear"):
        method.train_batch(conv_only, Batch(*synthetic(8), EPS, EPS), step)


@pytest.mark.parametrize("name", ["n-aaer", "rs-aaer"])
def test_aaer_regularises_the_examples_whose_loss_the_step_lowered(name):
    """Replayed by hand from the same start: CE at x_adv + lam1 (abnormal share) (lam2 mean loss decrease of the
    abnormal examples + lam3 max(0, their mean logit variation - the normal examples'))."""
    from fastrobust.attacks import threat_model
    from torch import nn

    class Sin(nn.Module):
        def forward(self, t):
            return torch.sin(t)

    _, method, _, _ = make_method(name)
    torch.manual_seed(0)    # a wiggly loss surface: the step lowers the loss of some examples (abnormal ones)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), Sin(), nn.Linear(32, 3))
    with torch.no_grad():
        model[1].weight.mul_(30)
    eps = 0.1
    x, y = synthetic(24)
    seen = {}
    torch.manual_seed(3)
    out = method.train_batch(model, Batch(x, y, eps, eps), lambda loss, wrt=None: seen.setdefault("loss", loss))
    assert out.passes == pytest.approx(24 * 2)
    torch.manual_seed(3)
    tm, noise = threat_model("linf"), method.noise * eps
    delta = tm.project(tm.start(x, noise, None), x, noise)
    start = (x + delta).requires_grad_(True)
    logits0 = model(start)
    before = F.cross_entropy(logits0, y, reduction="none")
    (g,) = torch.autograd.grad(before.sum(), start)
    delta = delta + eps * g.sign()
    delta = tm.project(delta, x, eps) if method.project else (x + delta).clamp(0, 1) - x
    logits = model((x + delta).clamp(0, 1))
    after = F.cross_entropy(logits, y, reduction="none")
    ab = before.detach() > after.detach()
    assert 0 < ab.sum() < 24       # both kinds in this batch
    var = (logits - logits0.detach()).pow(2).sum(1)
    extra = (var[ab].mean() - var[~ab].mean().detach()).clamp(-100, 100).clamp_min(0)
    reg = method.lam1 * ab.sum() / 24 * (method.lam2 * (before.detach() - after)[ab].mean() + method.lam3 * extra)
    assert torch.allclose(seen["loss"], F.cross_entropy(logits, y) + reg, atol=1e-6)


def test_elle_adds_the_local_linearity_error_of_three_points_around_x():
    """Replayed by hand: CE at x_adv (FGSM-RS, step 1.25 eps, not projected back) + lam x the mean squared error
    of l(x_c) against the interpolation of l(x_a) and l(x_b), x_c = (1 - a) x_a + a x_b."""
    from fastrobust.attacks import threat_model
    model, method, _, _ = make_method("elle")
    x, y = synthetic(24)
    seen = {}
    torch.manual_seed(4)
    out = method.train_batch(model, Batch(x, y, EPS, 1.25 * EPS), lambda loss, wrt=None: seen.setdefault("loss", loss))
    assert out.passes == pytest.approx(24 * 5)
    torch.manual_seed(4)
    tm = threat_model("linf")
    start = (x + tm.project(tm.start(x, EPS, None), x, EPS)).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(start), y, reduction="sum"), start)
    logits = model((start.detach() + 1.25 * EPS * g.sign()).clamp(0, 1))
    ends = (torch.cat([x, x]) + tm.start(torch.cat([x, x]), EPS, None)).clamp(0, 1)
    a = torch.rand(24)
    middle = (1 - a.view(-1, 1, 1, 1)) * ends[:24] + a.view(-1, 1, 1, 1) * ends[24:]
    la, lb, lc = (F.cross_entropy(model(p), y, reduction="none") for p in (ends[:24], ends[24:], middle))
    expected = F.cross_entropy(logits, y) + method.lam * (lc - ((1 - a) * la + a * lb)).pow(2).mean()
    assert torch.allclose(seen["loss"], expected, atol=1e-6)


@pytest.mark.slow
def test_the_leaders_train_through_fit_with_batchnorm(tmp_path):
    """Each leader trains 3 epochs through the engine (a BatchNorm model) and its passes add up as documented."""
    import fastrobust
    from torch import nn
    from test_fit import COMMON, PlainDataset

    class BNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(64, 3)

        def forward(self, x):
            return self.head(nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1))

    # 160 training examples in 5 minibatches; LIET refreshes (3 classes) once per epoch
    expected = {"gradalign": 11, "zerograd": 6, "nuat": 1 + 3 + 3, "gat": 9, "fgsm-rs-cs": 6,
                "liet": 8 + 3 * 3 / 160, "fgsm-uap": 8, "fgsm-cuap": 8, "fgsm-fuap": 9, "fgsm-pgi": 8, "n-aaer": 6, "rs-aaer": 6, "elle": 15, "fgsm-pco": 11}
    for name, passes in expected.items():
        summary = fastrobust.fit(BNNet(), PlainDataset(192, 0), test_data=PlainDataset(48, 1), method=name,
                                 out=str(tmp_path / name), progress=False, echo=lambda s: None,
                                 **{**COMMON, "epochs": 3})
        assert summary["passes_per_example"] == pytest.approx(passes), name


def _indexed(x, y, index, eps=EPS):
    batch = Batch(x, y, eps, eps)
    batch.index = index
    return batch


@pytest.mark.parametrize("name", ["fgsm-pgi", "fgsm-pco"])
def test_prior_guided_methods_keep_a_perturbation_per_example_and_count_their_passes(name):
    """Built here by class, given the examples' indices by hand (the engine's loader gives them)."""
    from fastrobust.attacks import threat_model
    from fastrobust.methods import MethodContext
    from fastrobust.methods.leaders import FGSMPCO, FGSMPGI
    from helpers import TinyNet

    cls = {"fgsm-pgi": FGSMPGI, "fgsm-pco": FGSMPCO}[name]
    torch.manual_seed(0)
    model = TinyNet().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(loss, wrt=None):
        opt.zero_grad()
        loss.backward()
        opt.step()

    ctx = MethodContext(num_classes=3, input_std=torch.ones(1), epochs=3, batches_per_epoch=2,
                        threat=threat_model("linf"), eps=EPS, alpha=EPS)
    method = cls(ctx, **cls.resolve_params({}))
    x, y = synthetic(24)
    with pytest.raises(Exception, match="indices"):
        method.train_batch(model, Batch(x, y, EPS, EPS), step)
    count = counted(model)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = method.train_batch(model, _indexed(x[:12], y[:12], torch.arange(12, 24)), step)
        assert out.passes == pytest.approx(count()) == pytest.approx(12 * (8 / 3 if name == "fgsm-pgi" else 11 / 3))
    stored = method.memory.tables["delta"].clone()
    assert stored.shape == (24, 1, 4, 4) and (stored[12:].abs() <= EPS + 1e-7).all()
    seen.clear()
    method.train_batch(model, _indexed(x[:12], y[:12], torch.arange(12, 24)), step)
    assert torch.allclose(seen[0] - x[:12], stored[12:].clamp(-x[:12], 1 - x[:12]), atol=1e-6)   # started from its prior
    state = method.state_dict()
    fresh = cls(ctx, **cls.resolve_params({}))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory.tables["delta"], method.memory.tables["delta"])


@pytest.mark.parametrize("name", ["fgsm-pgi", "fgsm-pco"])
def test_prior_guided_methods_learn_and_resume_exactly(name):
    """The contract's loss and resume checks, with example indices (minibatch b holds examples 24b..24b+23)."""
    import copy

    from fastrobust.attacks import threat_model
    from fastrobust.methods import MethodContext
    from fastrobust.methods.leaders import FGSMPCO, FGSMPGI
    from helpers import TinyNet

    cls = {"fgsm-pgi": FGSMPGI, "fgsm-pco": FGSMPCO}[name]

    def build(seed):
        torch.manual_seed(seed)
        model = TinyNet().train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(loss, wrt=None):
            opt.zero_grad()
            loss.backward()
            opt.step()

        ctx = MethodContext(num_classes=3, input_std=torch.ones(1), epochs=3, batches_per_epoch=2,
                            threat=threat_model("linf"), eps=EPS, alpha=EPS)
        return model, cls(ctx, **cls.resolve_params({"reset": 2} if name == "fgsm-pgi" else {})), step, opt

    def epochs(model, method, step, first, count):
        losses = []
        for epoch in range(first, first + count):
            for b in range(2):
                x, y = synthetic(24, seed=b)
                losses.append(method.train_batch(model, _indexed(x, y, torch.arange(24 * b, 24 * b + 24), 0.05),
                                                 step).loss.item())
            method.on_epoch_end(epoch)
        return losses

    model, method, step, opt = build(0)
    losses = epochs(model, method, step, 0, 2)
    saved = copy.deepcopy({"method": method.state_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
                           "rng": torch.get_rng_state()})
    go_on = epochs(model, method, step, 2, 4)
    assert sum(go_on[-2:]) < 0.7 * sum(losses[:2]), losses + go_on
    model2, fresh, step2, opt2 = build(1)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    fresh.load_state_dict(copy.deepcopy(saved["method"]))
    torch.set_rng_state(saved["rng"])
    assert epochs(model2, fresh, step2, 2, 4) == go_on


def test_example_memory_gathers_every_processs_rows_at_the_end_of_an_epoch():
    """Under torchrun each process writes the rows of its own examples: gather() (on_epoch_end) gives every
    process every row as its writer left it, and a row that no process wrote the processes' mean; on one
    process it changes nothing. Tables are made whole (ctx.examples rows) at their first use."""
    import threading

    from fastrobust.methods.leaders import ExampleMemory

    slots, barrier = [None, None], threading.Barrier(2)

    def all_reduce_sum(rank):
        def reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            out = slots[0] + slots[1]
            barrier.wait()
            return out
        return reduce

    like = torch.zeros(3, 2)
    memories = [ExampleMemory(6), ExampleMemory(6)]
    for rank, (rows, fill) in enumerate([([0, 1, 2], 10.0), ([3, 4], 20.0)]):
        index = torch.tensor(rows)
        got = memories[rank].get("delta", index, like[:len(rows)], lambda t, v=fill: t.fill_(v))
        assert memories[rank].tables["delta"].shape == (6, 2) and (got == fill).all()
        memories[rank].put("delta", index, (index[:, None] + 1.0).expand(-1, 2))
    threads = [threading.Thread(target=memories[r].gather, args=(all_reduce_sum(r),)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = torch.tensor([1.0, 2, 3, 4, 5, 15])[:, None].expand(-1, 2)
    for memory in memories:
        assert torch.equal(memory.tables["delta"], expected) and not memory.written["delta"].any()

    alone = ExampleMemory(6)
    alone.get("delta", torch.tensor([1, 4]), like[:2], lambda t: t.uniform_())
    alone.put("delta", torch.tensor([4]), torch.full((1, 2), 0.1234567))
    before = alone.tables["delta"].clone()
    alone.gather(lambda t: t)
    assert torch.equal(alone.tables["delta"], before)


def test_own_soft_targets_take_label_smoothing_as_torch_does():
    """FGSM-RS-CS, FGSM-PCO and LIET smooth their own targets; --label-smoothing S mixes them with the uniform
    distribution as torch's cross-entropy does with soft targets (what the FastAT Benchmark trains on)."""
    from fastrobust.methods.leaders import _label_smoothed, _soft_ce

    logits = torch.randn(8, 5)
    targets = torch.softmax(torch.randn(8, 5), 1)
    mixed = _label_smoothed(targets, 0.4)
    entropy = -(mixed * mixed.log()).sum(1).mean()
    assert torch.allclose(_soft_ce(logits, mixed) + entropy,
                          torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.4), atol=1e-6)
    assert _label_smoothed(targets, 0.0) is targets


def test_ssat_trains_on_the_first_misclassified_checkpoint():
    """Replayed by hand: FGSM-RS from the start the model saw; an example wrong at the start trains on x; the
    others on the first of x + k/c delta (k = 1 .. c-1, classified in eval mode) that is misclassified, else x + delta."""
    import copy

    c, eps = 4, 0.4
    model, method, step, _ = make_method("ssat", c=c)
    x, y = synthetic(48)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):                          # trained on clean data a little, so that the outcomes are mixed
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    before = copy.deepcopy(model)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((i[0].detach().clone(), m.training)))
    out = method.train_batch(model, Batch(x, y, eps, 1.25 * eps), step)
    assert [t for _, t in seen] == [True] + [False] * (c - 1) + [True]   # checkpoints in eval mode
    start = seen[0][0].requires_grad_(True)
    logits = before(start)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), start)
    delta = (start.detach() - x + 1.25 * eps * g.sign()).clamp(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    right = logits.argmax(1) == y
    expected, kinds = [], []
    for i in range(len(x)):
        if not right[i]:
            expected.append(x[i]); kinds.append("x")
            continue
        for k in range(1, c):
            point = x[i] + k / c * delta[i]
            if before(point[None]).argmax(1).item() != y[i].item():
                expected.append(point); kinds.append(k)
                break
        else:
            expected.append(x[i] + delta[i]); kinds.append("full")
    assert torch.allclose(seen[-1][0], torch.stack(expected), atol=1e-6)
    assert len(set(kinds)) >= 3, kinds          # the rule's branches are all exercised
    assert out.passes == pytest.approx(48 * (2 + (c - 1) / 3))


def test_fgsm_mep_cs_constrains_the_clean_loss_and_keeps_its_priors():
    """The constraint's term is +-w CE(f(x)) on the method's smoothed targets (the difference of the weight
    gradients with it up and down is twice that loss's gradient); the stored perturbation moves as fgsm-pgi's."""
    from fastrobust.methods.leaders import _smoothed_targets, _soft_ce

    x, y = synthetic(24)
    grads = {}
    for prev in (-1.0, None, 10.0):
        model, method, _, _ = make_method("fgsm-mep-cs", epochs=4, stride=0, gamma=0.0, label_smoothing=0.2)
        method.epoch = 1
        method.cs.prev = prev
        torch.manual_seed(3)
        method.train_batch(model, Batch(x, y, EPS, EPS, torch.arange(24)), lambda loss, wrt=None: loss.backward())
        grads[prev] = torch.cat([p.grad.flatten() for p in model.parameters()])
    model, method, _, _ = make_method("fgsm-mep-cs", epochs=4)
    clean = _soft_ce(model(x), _smoothed_targets(y, 3, 0.6, 0.2))
    g_clean = torch.cat([g.flatten() for g in torch.autograd.grad(clean, list(model.parameters()))])
    assert torch.allclose(grads[-1.0] - grads[10.0], 2 * g_clean, atol=1e-6)
    assert torch.allclose(grads[-1.0] - grads[None], grads[None] - grads[10.0], atol=1e-6)
    # the priors: the first start is the stored random sign, the next stored one moves by eps sign(g / |g|_1)
    model, method, step, _ = make_method("fgsm-mep-cs")
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    method.train_batch(model, Batch(x, y, EPS, EPS, torch.arange(24)), step)
    start = seen[0] - x
    stored = method.memory.tables["delta"][:24]
    assert torch.allclose(start.abs().clamp(max=EPS), start.abs()) and not torch.allclose(stored, start)
    assert ((stored - start).abs() <= 2 * EPS + 1e-6).all() and (stored.abs() <= EPS + 1e-6).all()
