"""``nnreg_register --fixed-mask / --moving-mask``: the masks reach the affine and every deformable stage (the
working grid's, the finer grid's velocity and its correction) on the grids those stages measure on, a mask on
another grid is resampled onto its image's in physical space, and a mask that covers none of its image is one line
naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

import nnreg.registration.pipeline as pipeline
from nnreg.cli.register import main
from nnreg.dataset.image_io import read_image
from nnreg.registration.run import RunRequest, read_mask, run_registration
from tests.registration.conftest import read, write_pair
from tests.registration.test_finer_grid import _one_millimetre


def _mask_like(image_path: Path, path: Path, rows: slice) -> Path:
    """A mask on the grid of ``image_path``: ones over ``rows`` of its first array axis."""
    image = sitk.ReadImage(str(image_path))
    mask = np.zeros(image.GetSize(), np.uint8)
    mask[rows] = 1
    out = sitk.GetImageFromArray(mask.transpose(2, 1, 0))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return path


def test_masks_reach_every_deformable_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed, moving, _ = write_pair(tmp_path / "in")
    _one_millimetre(fixed)                             # a 1 mm fixed image: a finer-grid stage and a correction
    fixed_mask = _mask_like(fixed, tmp_path / "fixed_mask.nii.gz", slice(0, 30))
    moving_mask = _mask_like(moving, tmp_path / "moving_mask.nii.gz", slice(0, 15))
    seen: list[tuple[str, object]] = []
    refine_field, refine_finer = pipeline.refine_field, pipeline.refine_on_finer_grid

    def record_field(fixed_t, moving_t, start, settings, masks=None):
        seen.append(("working", masks, tuple(fixed_t.shape)))
        return refine_field(fixed_t, moving_t, start, settings, masks=masks)

    def record_finer(fixed_t, moving_t, velocity, refinement, settings, *args, masks=None, **kwargs):
        seen.append((settings.parametrisation, masks, tuple(fixed_t.shape)))
        return refine_finer(fixed_t, moving_t, velocity, refinement, settings, *args, masks=masks, **kwargs)

    monkeypatch.setattr(pipeline, "refine_field", record_field)
    monkeypatch.setattr(pipeline, "refine_on_finer_grid", record_finer)
    lines = run_registration(RunRequest(fixed=str(fixed), moving=str(moving), field=str(tmp_path / "f.nii.gz"),
                                        fixed_mask=str(fixed_mask), moving_mask=str(moving_mask), threads=1))
    assert [name for name, _, _ in seen] == ["working", "velocity", "displacement"]
    fixed_array, _ = read(fixed)
    for name, masks, shape in seen:
        assert masks.fixed is not None and masks.moving is not None, name
        assert tuple(masks.fixed.shape) == tuple(masks.moving.shape) == shape, name
        # the fixed mask keeps its share of the grid on every stage's grid (30 of the 1 mm image's rows)
        share = float(masks.fixed.mean())
        assert share == pytest.approx(30 / fixed_array.shape[0], abs=0.05), name
        assert 0 < float(masks.moving.sum()) < masks.moving.numel(), name
    assert any("restricted to the fixed mask" in line and "moving mask" in line for line in lines)


def test_a_mask_on_another_grid_is_resampled_onto_its_image(tmp_path: Path) -> None:
    fixed, _, _ = write_pair(tmp_path / "in")
    image = sitk.ReadImage(str(fixed))
    coarse = sitk.Image([n // 2 for n in image.GetSize()], sitk.sitkUInt8)
    coarse.SetSpacing([2 * s for s in image.GetSpacing()])
    coarse.SetOrigin([o + s / 2 for o, s in zip(image.GetOrigin(), image.GetSpacing())])
    array = np.zeros(coarse.GetSize(), np.uint8)
    array[: coarse.GetSize()[0] // 2] = 1
    mask = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    mask.CopyInformation(coarse)
    sitk.WriteImage(mask, str(tmp_path / "coarse_mask.nii.gz"))
    resampled = read_mask(str(tmp_path / "coarse_mask.nii.gz"), read_image(fixed)[1])
    assert resampled.shape == tuple(image.GetSize())
    half = (image.GetSize()[0] // 2) // 2 * 2          # the coarse mask's rows, in the image's voxels
    assert resampled[:half].all() and not resampled[half:].any()


def test_a_mask_that_covers_none_of_its_image_is_one_line(tmp_path: Path) -> None:
    fixed, moving, _ = write_pair(tmp_path / "in")
    empty = _mask_like(moving, tmp_path / "empty_mask.nii.gz", slice(0, 0))
    result = CliRunner().invoke(main, ["--fixed", str(fixed), "--moving", str(moving), "--moving-mask", str(empty),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "empty_mask.nii.gz" in lines[0] and "covers none" in lines[0], result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
