"""Find a trainer class by name: nnreg's own trainers, or a class in the user's module.

Accepted forms: ``nnRegTrainer`` (any subclass defined in a module of ``nnreg.training``), ``package.module.Class``
or ``package.module:Class`` (importable from ``PYTHONPATH``), ``/path/to/file.py:Class`` (a file anywhere).
Subclass only to change behaviour; numbers are hyperparameters (CLI options).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from nnreg.utilities.errors import ConfigurationError


def _base() -> type:
    from nnreg.training.trainer import nnRegTrainer

    return nnRegTrainer


def _check(cls: object, spec: str) -> type:
    if not (isinstance(cls, type) and issubclass(cls, _base())):
        raise ConfigurationError(f"trainer {spec!r} is not a subclass of nnRegTrainer")
    return cls


def _from_file(path: Path, class_name: str, spec: str) -> type:
    if not path.is_file():
        raise ConfigurationError(f"trainer file {path} does not exist ({spec!r})")
    module_name = "nnreg_user_trainer_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigurationError(f"cannot import trainer file {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
    if not hasattr(module, class_name):
        raise ConfigurationError(f"{path} defines no class {class_name!r}")
    return _check(getattr(module, class_name), spec)


def _from_module(module_name: str, class_name: str, spec: str) -> type:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import the module of trainer {spec!r}: {exc}") from None
    if not hasattr(module, class_name):
        raise ConfigurationError(f"module {module_name} has no class {class_name!r}")
    return _check(getattr(module, class_name), spec)


def _builtin(name: str) -> type | None:
    import nnreg.training as package

    base = _base()
    if name == base.__name__:
        return base
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, base):
            return cls
    return None


def find_trainer(spec: str) -> type:
    """The trainer class named by ``spec`` (see the module docstring); one-line error when there is none."""
    if ":" in spec:
        location, _, class_name = spec.rpartition(":")
        if location.endswith(".py") or "/" in location:
            return _from_file(Path(location).expanduser(), class_name, spec)
        return _from_module(location, class_name, spec)
    if "." in spec:
        module_name, _, class_name = spec.rpartition(".")
        return _from_module(module_name, class_name, spec)
    found = _builtin(spec)
    if found is None:
        raise ConfigurationError(f"unknown trainer {spec!r}: not a trainer in nnreg.training; give a class of your "
                                 f"own as package.module.Class or /path/file.py:Class")
    return found
