"""Model zoo: a registry of image classifiers wrapped with input normalisation.

>>> model = create_model("preact-resnet18", num_classes=10, width=16)
>>> model(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from fastrobust.models import cnn, resnet, resnet50, vgg, wrn  # noqa: F401  (registers the built-in models)
from fastrobust.models.layers import Classifier, Normalize
from fastrobust.models.registry import FACTORY_HELP, ModelEntry, check_output, create_model, list_models, register_model

__all__ = ["FACTORY_HELP", "Classifier", "check_output", "ModelEntry", "Normalize", "create_model", "list_models", "register_model"]
