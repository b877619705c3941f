"""Tuning rows of ``benchmarks/register.py`` (``--deformable-settings``): ``nnreg_register``'s pipeline in the
benchmark's own process with some settings replaced, so settings can be compared on training pairs without a
command-line option for each.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnreg.registration.pipeline import RegistrationSettings


def variant_settings(overrides: str) -> RegistrationSettings:
    """``nnreg_register``'s settings with the tuning row's ``overrides`` (``KEY=VALUE,...``): keys ``finer_<name>``
    replace ``FinerGridSettings.<name>`` of the finer-grid stage (``finer_steps``, ``finer_parametrisation``, ...,
    in the ``--finer-grid-settings`` syntax of :func:`nnreg.inference.finer_grid.parse_finer_overrides`), keys
    ``correction_<name>`` those of the displacement correction after it (``correction_steps=0``: none), the
    others the deformable stage's (``--refinement-settings`` syntax); a wrong key or value is one line."""
    from nnreg.inference.finer_grid import parse_finer_overrides
    from nnreg.inference.refinement_settings import parse_overrides

    items = [item.strip() for item in overrides.split(",") if item.strip()]

    def prefixed(prefix: str) -> dict[str, Any]:
        return parse_finer_overrides(",".join(i.removeprefix(prefix) for i in items if i.startswith(prefix)))

    settings = RegistrationSettings()
    return replace(settings, deformable=settings.deformable.with_overrides(
        parse_overrides(",".join(i for i in items if not i.startswith(("finer_", "correction_"))))),
        finer_grid=settings.finer_grid.with_overrides(prefixed("finer_")),
        correction=settings.correction.with_overrides(prefixed("correction_")))


def nnreg_variant(overrides: str) -> Callable[..., tuple[np.ndarray, dict[str, Any]]]:
    """nnreg's pipeline in this process with :func:`variant_settings` of ``overrides``."""
    settings = variant_settings(overrides)

    def run(fixed: Path, moving: Path, out: Path, threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        from nnreg.dataset.image_io import read_image
        from nnreg.registration.pipeline import register_images
        from nnreg.registration.transforms import forward_on_fixed_grid

        f, f_geometry = read_image(fixed)
        m, m_geometry = read_image(moving)
        registration = register_images(f, f_geometry, m, m_geometry, settings)
        (out / "register.log").write_text("\n".join(registration.log) + "\n")
        return forward_on_fixed_grid(registration, f_geometry, m_geometry)[0], {}

    return run
