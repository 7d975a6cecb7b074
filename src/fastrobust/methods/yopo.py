"""YOPO-m-n (Zhang et al., NeurIPS 2019, "You Only Propagate Once"; a baseline of the DEAT paper's table).

Per minibatch, ``outer`` (m) full forward and backward passes from a uniform random start. Each gives the
weights' gradient (kept) and ``g``, the loss's gradient at the output of the model's first layer; ``inner``
(n) signed steps of size alpha then move the perturbation against the first layer alone, along the input
gradient of ``sum(first_layer(x + delta) * g)`` (the loss linearised at the first layer: no pass through
the rest of the model), and the first layer's weights also get the gradient of that sum at the new
perturbation. One optimizer step per minibatch takes the gradients of all m passes: their sum times 2/m
(the reference's learning rate 0.1 x 2/m on the sum, so that the usual lr 0.1 is the paper's setting).

It is not attack x loss x schedule: the weight step takes the gradients of every outer pass and of the
first layer's inner objective, and the attack needs the gradient at an inner layer. The engine's ``step``
gets one surrogate loss, ``sum(param * gradient)``, whose backward puts exactly those gradients on the
parameters (and runs DDP's all-reduce as for any method).

The first layer is the submodule the model names in ``first_layer`` (every registered model declares it;
a :class:`~fastrobust.models.Classifier` names its net's) or the method's ``layer`` parameter. The inner
steps run the model's forward only up to that layer (a forward hook stops it there), so whatever the model
does to its input before the layer (fastrobust's input normalisation) is part of it.
"""

from __future__ import annotations

import torch

from ..attacks.compiled import unwrapped
from ..attacks.kernel import ascend
from ..errors import ConfigError
from ..models.layers import Classifier
from .base import BACKWARD, FORWARD, Batch, Method, Param, StepOutput
from .losses import cross_entropy


class _Reached(Exception):
    """Raised by the first layer's forward hook to stop the model's forward there."""


def first_layer(model: torch.nn.Module, name: str = "") -> torch.nn.Module:
    """The submodule ``name``, else the one the model declares in its ``first_layer`` attribute. Names are the
    user's own model's (``conv1``), also when fastrobust wraps it in a :class:`Classifier` (``net.conv1``)."""
    raw = unwrapped(model)
    own = raw.net if isinstance(raw, Classifier) else raw
    name = name or getattr(raw, "first_layer", None) or getattr(own, "first_layer", None)
    children = ", ".join(n for n, _ in own.named_children()) or "none"
    if not isinstance(name, str) or not name:
        raise ConfigError("method yopo needs the model's first layer (the module that reads the input first): pass "
                          "--layer NAME (e.g. --layer conv1 for a torchvision ResNet; this model's top-level modules: "
                          f"{children}), or set model.first_layer = NAME. fastrobust's registered models declare it")
    for root in (own, raw):
        try:
            return root.get_submodule(name)
        except AttributeError:
            pass
    raise ConfigError(f"method yopo: the model has no submodule {name!r} (--layer / model.first_layer); its "
                      f"top-level modules: {children}")


class YOPO(Method):
    name = "yopo"
    description = ("YOPO-m-n (Zhang et al., NeurIPS 2019): m = outer full passes from a uniform random start, each "
                   "followed by n = inner signed steps (alpha, default eps/4) against the model's first layer alone, "
                   "along the loss's gradient at that layer's output; one weight step on the m passes' gradients "
                   "(sum x 2/m) plus the first layer's gradient of its inner objective. Needs the model's first "
                   "layer (declared by fastrobust's models; --layer NAME otherwise). Cost m passes (the first "
                   "layer's own steps not counted).")
    params = (Param("outer", int, 5, "m, full forward-backward passes per minibatch", minimum=1),
              Param("inner", int, 3, "n, the steps against the first layer after each full pass", minimum=1),
              Param("layer", str, "", "the model's first layer, as a submodule name (e.g. conv1); default the one "
                    "the model declares in its first_layer attribute"))

    def __init__(self, ctx, **params) -> None:
        super().__init__(ctx, **params)
        self.layer_module = None

    @classmethod
    def default_alpha(cls, eps, recipe_ratio, params):
        return eps / 4     # the reference's sigma 2/255 at eps 8/255

    @classmethod
    def check_model(cls, model, params, num_classes):
        first_layer(model, params["layer"])

    def _layer_output(self, model, x: torch.Tensor) -> torch.Tensor:
        """The first layer's output for input ``x``: the model's forward, stopped at that layer."""
        kept = {}

        def stop(module, args, output):
            kept["out"] = output
            raise _Reached

        handle = self.layer_module.register_forward_hook(stop)
        try:
            unwrapped(model)(x)
        except _Reached:
            pass
        finally:
            handle.remove()
        if "out" not in kept:
            raise ConfigError("method yopo: the model's forward never ran its first layer "
                              f"({self.layer or 'model.first_layer'}); name the layer that reads the input (--layer)")
        return kept["out"]

    def train_batch(self, model, batch: Batch, step) -> StepOutput:
        x, y, eps, tm = batch.x.detach(), batch.y, batch.eps, self.ctx.threat
        if self.layer_module is None:
            self.layer_module = first_layer(model, self.layer)
        params = [p for p in unwrapped(model).parameters() if p.requires_grad]
        layer_params = [p for p in self.layer_module.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        slot = {id(p): i for i, p in enumerate(params)}
        kept = {}
        hook = self.layer_module.register_forward_hook(lambda m, args, out: kept.__setitem__("out", out))
        delta = tm.project(tm.start(x, eps, None), x, eps)
        n = len(x)

        def inner_gradient(g):
            def gradient(k, x0, d, against):
                point = (x0 + d).clamp(0, 1).requires_grad_(True)
                (grad,) = torch.autograd.grad((self._layer_output(model, point) * g).sum(), point)
                return grad, None
            return gradient

        try:
            with torch.enable_grad():
                for _ in range(self.outer):
                    logits = model((x + delta).clamp(0, 1))
                    loss = cross_entropy(logits, y, self.ctx.label_smoothing)
                    *grads, g = torch.autograd.grad(loss, params + [kept["out"]], allow_unused=True)
                    for acc, grad in zip(total, grads):
                        if grad is not None:
                            acc += grad
                    g = g.detach()
                    delta, _, _ = ascend(model, x, delta, self.inner, batch.alpha, eps, tm, y,
                                         gradient=inner_gradient(g))
                    if layer_params:     # the first layer's weights: the gradient of its objective at the new delta
                        objective = (self._layer_output(model, (x + delta).clamp(0, 1)) * g).sum()
                        for p, grad in zip(layer_params, torch.autograd.grad(objective, layer_params)):
                            total[slot[id(p)]] += grad
        finally:
            hook.remove()
        scale = 2.0 / self.outer
        step(sum((p * (scale * t)).sum() for p, t in zip(params, total)))
        return StepOutput(loss.detach(), logits.detach(), n * self.outer * (FORWARD + BACKWARD))
