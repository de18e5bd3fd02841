"""alexnet-lab: the AlexNet chapter of Dive into Deep Learning as fast, tested software.

Layers: data -> models -> engine -> cli, with analysis and reports beside them.
"""

__version__ = "0.1.0"

from alexnet_lab.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
