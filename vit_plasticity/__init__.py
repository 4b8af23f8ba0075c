"""vit-plasticity: the plasticity of Vision Transformer components, and finetuning the components it favours.

`import vit_plasticity as vp` gives the names a user needs, each imported from its module on first use
(PEP 562), so that importing the package stays light (no torch). Written by hand: nbdev only keeps
`__version__` current (settings.ini `put_version_in_init`); nbs/24_recommend.ipynb describes and tests it."""
__version__ = "0.1.0"

import importlib
import sys
import types

_API = {"load_vit": "models", "measure_plasticity": "plasticity", "layer_summary": "plasticity",
        "component_summary": "plasticity", "set_trainable": "components", "finetune": "finetune",
        "dataloaders": "data", "plasticity_images": "data", "rank_components": "recommend",
        "recommend_components": "recommend", "component_patterns": "recommend", "run_grid": "grid",
        "write_report": "analysis"}  # each top-level name, and the module it lives in
__all__ = list(_API)


def __getattr__(name: str):
    "A top-level name, imported from its module on first use (PEP 562)."
    if name not in _API: raise AttributeError(f"module 'vit_plasticity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vit_plasticity.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]: return sorted({*globals(), *_API})


class _Package(types.ModuleType):
    "The package: importing a submodule named like a top-level function (`finetune`) leaves the function."
    def __setattr__(self, name: str, value) -> None:
        if not (name in _API and isinstance(value, types.ModuleType)): super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
