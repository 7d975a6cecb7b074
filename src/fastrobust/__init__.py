"""fastrobust: cheap adversarial training of robust image classifiers."""

__version__ = "0.1.0"


def load_model(path, device="cpu", model=None, trust_code=False):
    """Load a trained model (eval mode, [0,1] inputs, normalisation inside) from a checkpoint, a run
    directory or a folder written by ``fastrobust export``.

    ``model``: a module (built as in the run) to load the weights into, instead of rebuilding it.
    ``trust_code``: rebuild a model whose ``package.module:factory`` is named in a folder you did not
    train into yourself (importing it runs its code; see :mod:`fastrobust.trust`).
    """
    from .engine.checkpoint import load_model as _load

    return _load(path, device, model, trust_code)


def train(cfg, **kwargs):
    """Run a training job from a :class:`fastrobust.config.TrainConfig`; returns the summary dict."""
    from .engine import train as _train

    return _train(cfg, **kwargs)


def fit(model, train_data, **kwargs):
    """Adversarially train your ``model`` (any nn.Module) on ``train_data`` (a Dataset, a DataLoader or
    ``(x, y)`` tensors); writes a run folder and returns its summary. See :func:`fastrobust.fitting.fit`."""
    from .fitting import fit as _fit

    return _fit(model, train_data, **kwargs)


__all__ = ["__version__", "fit", "load_model", "train"]
