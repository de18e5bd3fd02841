"""Models: a small registry of pure nn.Modules; importing this package registers them all."""

from alexnet_lab.models import alexnet, alexnet_2012, lenet, speednet  # noqa: F401  (registration side effect)
from alexnet_lab.models import alexnet_small, fmnist_net, lenet_modern  # noqa: F401  (the chapter's exercises)
from alexnet_lab.models.registry import (ModelSpec, build_model, check_input_size, get_spec, list_models,
                                        register_model, valid_input_sizes)

__all__ = ["ModelSpec", "build_model", "check_input_size", "get_spec", "list_models", "register_model",
           "valid_input_sizes"]
