"""Stub modules for parts of openpi that are irrelevant to the JAX model / checkpoint code.

`openpi` is a regular package (it has __init__.py), so a same-named directory on sys.path cannot shadow
individual submodules; instead `install()` registers the stubs in `sys.modules` *before* openpi is imported.

- openpi.models_pytorch.pi0_pytorch: imported at module level by openpi/models/model.py, only used by
  `BaseModelConfig.load_pytorch`. The real module pulls in transformers + openpi's patched transformers files.
- openpi.training.data_loader: imported at module level by openpi/training/checkpoints.py, but only referenced in
  type annotations there (checkpoints.py uses `from __future__ import annotations`). The real module needs
  lerobot, openpi.training.config, tensorflow-datasets (droid), etc.
"""

import sys
import types


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__file__ = __file__
    mod.__dict__.update(attrs)
    mod.__openpi_ref_stub__ = True
    sys.modules[name] = mod
    return mod


def install() -> None:
    class PI0Pytorch:  # noqa: D401
        def __init__(self, *args, **kwargs):
            raise RuntimeError("openpi.models_pytorch is stubbed out (openpi_ref_stubs.py)")

    pkg = _stub("openpi.models_pytorch")
    pkg.__path__ = []  # make it a package
    pkg.pi0_pytorch = _stub("openpi.models_pytorch.pi0_pytorch", PI0Pytorch=PI0Pytorch)

    class DataLoader:  # only used as an annotation
        pass

    _stub("openpi.training.data_loader", DataLoader=DataLoader)
