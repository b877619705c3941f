"""``nnreg_register`` end to end through click: a run that writes its files, and the one-line errors."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from click.testing import CliRunner

from nnreg.cli.register import main
from tests.alignment.phantom import to_image
from tests.registration.conftest import one_line_error, write_pair


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_register_single_outputs(tmp_path):
    fixed, moving, _ = write_pair(tmp_path / "in")
    result = _run("--fixed", str(fixed), "--moving", str(moving), "--field", str(tmp_path / "f.nii.gz"),
                  "--warped", str(tmp_path / "w.nii.gz"), "--affine-only")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f.nii.gz").is_file() and (tmp_path / "w.nii.gz").is_file()
    assert "total:" in result.output and "affine:" in result.output


def test_nothing_to_write(tmp_path):
    fixed, moving, _ = write_pair(tmp_path / "in")
    one_line_error(_run("--fixed", str(fixed), "--moving", str(moving)), "nothing to write")


def test_unreadable_file(tmp_path):
    fixed, _, _ = write_pair(tmp_path / "in")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    one_line_error(_run("--fixed", str(fixed), "--moving", str(broken), "-o", str(tmp_path / "out")),
                    "broken.nii.gz", "cannot read")


def test_non_3d_input(tmp_path):
    fixed, _, _ = write_pair(tmp_path / "in")
    image = sitk.GetImageFromArray(np.ones((2, 8, 8, 8), np.float32), isVector=False)
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(image, str(four))
    one_line_error(_run("--fixed", str(fixed), "--moving", str(four), "-o", str(tmp_path / "out")),
                    "four.nii.gz", "3D")


def test_constant_image(tmp_path):
    fixed, _, _ = write_pair(tmp_path / "in")
    constant = tmp_path / "constant.nii.gz"
    sitk.WriteImage(to_image(np.full((20, 20, 20), 7.0, np.float32)), str(constant))
    one_line_error(_run("--fixed", str(fixed), "--moving", str(constant), "-o", str(tmp_path / "out")),
                    "constant.nii.gz", "constant")
    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(to_image(np.zeros((20, 20, 20), np.float32)), str(empty))
    one_line_error(_run("--fixed", str(empty), "--moving", str(fixed), "-o", str(tmp_path / "out")),
                    "empty.nii.gz", "constant")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_overlap_below_threshold(tmp_path):
    """A thin plate against the ellipsoid: no affine makes them overlap; one line names the moving image."""
    fixed, _, _ = write_pair(tmp_path / "in")
    plate = np.zeros((40, 48, 40), np.float32)
    plate[:, :, 19:21] = 100.0 + 50.0 * np.random.default_rng(0).random((40, 48, 2))
    moving = tmp_path / "plate.nii.gz"
    sitk.WriteImage(to_image(plate), str(moving))
    one_line_error(_run("--fixed", str(fixed), "--moving", str(moving), "-o", str(tmp_path / "out")),
                    "plate.nii.gz", "overlap")


def test_the_similarity_follows_the_modalities_unless_given(tmp_path, monkeypatch):
    """Different LUMIR modality suffixes pick MIND-SSC (MI for the affine stage); --similarity overrides; the run
    with MIND writes its outputs and says what it did."""
    import nnreg.registration.run as run_module
    from nnreg.inference.refinement_settings import MULTIMODAL_REFINEMENT
    from nnreg.registration.run import RunRequest, choose_similarity

    assert choose_similarity(RunRequest("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz")) == "mind"
    assert choose_similarity(RunRequest("a/X_0001_0000.nii.gz", "a/X_0002_0000.nii.gz")) == "lncc"
    assert choose_similarity(RunRequest("fixed.nii.gz", "moving.nii.gz")) == "lncc"
    assert choose_similarity(RunRequest("a/X_0001_0000.nii.gz", "a/X_0002_0001.nii.gz", similarity="lncc")) == "lncc"
    seen = {}
    real = run_module.register_images

    def spy(*args, **kwargs):
        seen["settings"] = args[4]
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "register_images", spy)
    fixed, moving, _ = write_pair(tmp_path / "in")
    result = _run("--fixed", str(fixed), "--moving", str(moving), "--field", str(tmp_path / "f.nii.gz"),
                  "--similarity", "mind")
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert settings.affine.similarity == "mi" and not settings.histogram_matching
    assert settings.deformable.similarity == "mind"
    assert settings.deformable.lambda_reg == MULTIMODAL_REFINEMENT["lambda_reg"]
    assert settings.deformable.remap_steps == MULTIMODAL_REFINEMENT["remap_steps"] > 0   # MIND, then remapped NCC
    assert settings.finer_grid_factor((1.0, 1.0, 1.0), 2.0) == 1    # no finer-grid stage after MIND, even at 1 mm
    assert (tmp_path / "f.nii.gz").is_file()
