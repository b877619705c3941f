"""benchmarks/register.py on tiny synthetic images: the perturbed-pair generator is reproducible by seed and keeps the
image, its labels and its landmarks consistent (checked against an independent resampling), a missing anchor package
is a table row, and one real ``nnreg_register`` run is scored end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnreg.dataset.image_io import Geometry, read_image
from tests.benchmarks.conftest import load_benchmark
from tests.synthetic import make_learn2reg_dataset, make_subject

register = load_benchmark("register")
from benchmarks import register_pairs as pairs  # noqa: E402  (importable once the benchmark put the root on sys.path)
from benchmarks import register_scoring as scoring  # noqa: E402
from benchmarks import register_variants as variants  # noqa: E402

# anisotropic spacing and a permuted, flipped direction: an axis-order or mm/voxel slip shows
GEOMETRY = Geometry((28, 32, 24), (1.5, 1.0, 1.25), (3.0, -4.0, 5.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))


def _subject() -> tuple[np.ndarray, np.ndarray]:
    image, labels = make_subject(GEOMETRY.shape, 3)
    return image.astype(np.float32), labels.astype(np.int32)


def _physical_points(geometry: Geometry) -> np.ndarray:
    matrix = np.asarray(geometry.direction, float).reshape(3, 3) * np.asarray(geometry.spacing)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).reshape(-1, 3)
    return index @ matrix.T + np.asarray(geometry.origin)


def _to_index(points: np.ndarray, geometry: Geometry) -> np.ndarray:
    matrix = np.asarray(geometry.direction, float).reshape(3, 3) * np.asarray(geometry.spacing)
    return np.linalg.solve(matrix, (points - np.asarray(geometry.origin)).T)


def test_generator_is_reproducible_by_seed() -> None:
    image, labels = _subject()
    a = pairs.perturb(image, GEOMETRY, labels, labels, pairs.Perturbation(), seed=7, index=1)
    b = pairs.perturb(image, GEOMETRY, labels, labels, pairs.Perturbation(), seed=7, index=1)
    c = pairs.perturb(image, GEOMETRY, labels, labels, pairs.Perturbation(), seed=8, index=1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.scanner_image, b.scanner_image)
    assert a.record == b.record
    assert not np.array_equal(a.image, c.image) and a.record["rotation_deg"] != c.record["rotation_deg"]
    assert np.array_equal(image, _subject()[0])                      # the input is not modified


def test_affine_part_follows_the_recorded_parameters() -> None:
    """Without the warp, ``S(p) = R K (p - c) + c + t`` rebuilt from the record alone (independent of ITK)."""
    rng = np.random.default_rng([3, 0])
    transform, record = pairs.random_transform(GEOMETRY, pairs.Perturbation(warp=0.0), rng)
    ax, ay, az = np.radians(record["rotation_deg"])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    matrix, centre = rz @ ry @ rx @ np.diag(record["scale"]), np.asarray(record["centre_mm"])
    for p in _physical_points(GEOMETRY)[::997]:
        expected = matrix @ (p - centre) + centre + np.asarray(record["shift_mm"])
        np.testing.assert_allclose(transform.TransformPoint([float(x) for x in p]), expected, atol=2e-3)


def test_perturbed_labels_are_the_images_own_labels_transformed() -> None:
    image, labels = _subject()
    moved = pairs.perturb(image, GEOMETRY, labels, labels, pairs.Perturbation(), seed=0, index=0)
    transform, _ = pairs.random_transform(GEOMETRY, pairs.Perturbation(), np.random.default_rng([0, 0]))
    # independent resampling: S(p) per voxel, then scipy on the original arrays (nearest / linear, 0 outside)
    points = np.array([transform.TransformPoint([float(x) for x in p]) for p in _physical_points(GEOMETRY)])
    index = _to_index(points, GEOMETRY)
    nearest = ndimage.map_coordinates(labels, index, order=0, mode="constant", cval=0).reshape(GEOMETRY.shape)
    linear = ndimage.map_coordinates(image, index, order=1, mode="constant", cval=0).reshape(GEOMETRY.shape)
    assert np.mean(moved.labels == nearest) > 0.995                  # ties at exactly half a voxel may differ
    np.testing.assert_allclose(moved.image, linear, atol=1e-2 * image.max())
    np.testing.assert_array_equal(moved.labels, moved.landmarks)     # landmarks go through the same transform
    assert moved.record["warp_max_mm"] == 5.0 and set(np.unique(moved.labels)) <= set(np.unique(labels))
    # where the label is constant around a voxel, the moved image has that label's intensity
    intensity = {int(v): float(np.median(image[labels == v])) for v in np.unique(labels)}
    interior = ndimage.minimum_filter(moved.labels, 3) == ndimage.maximum_filter(moved.labels, 3)
    expected = np.vectorize(intensity.get)(moved.labels)
    assert np.mean(np.abs(moved.image - expected)[interior] < 1e-2 * image.max()) > 0.98
    assert moved.scanner_image.max() > 3 * image.max()               # units x4 (with bias, gamma and noise)


def test_missing_anchor_package_is_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(register.PACKAGES, "greedy", ("no_such_package_for_nnreg", "picsl-greedy"))
    row = register.run_method("greedy", [], "geometry", tmp_path, None, None)
    assert row["status"].startswith("not installed") and "picsl-greedy" in row["status"]
    assert "not installed" in register.format_rows([row])


def test_nnreg_register_end_to_end_is_scored(tmp_path: Path) -> None:
    dataset = make_learn2reg_dataset(tmp_path / "data", n_train=2, n_val=2)
    out = tmp_path / "bench"
    code = register.main(["--dataset", str(dataset), "--split", "train", "--pairs", "1", "--methods", "nnreg,zero",
                          "--sets", "geometry", "--threads", "1", "--output", str(out), "--json",
                          str(tmp_path / "r.json"), "--deformable-settings", "steps=5,fine_steps=2"])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["nnreg"]["status"] == "ok" and rows["zero"]["status"] == "ok"
    assert rows["nnreg"]["dice"] > rows["zero"]["dice"] + 0.1         # the perturbation is undone, not ignored
    assert rows["nnreg"]["ndv"] is not None and rows["nnreg"]["seconds"] > 0
    assert (out / "geometry" / "nnreg" / "pair00" / "register.log").is_file()
    variant = rows["steps=5,fine_steps=2"]                            # a tuning row: the pipeline in-process
    assert variant["status"] == "ok" and variant["dice"] > rows["zero"]["dice"]
    assert "deformable: 7 steps" in (out / "geometry" / "steps-5_fine_steps-2" / "pair00" / "register.log").read_text()
    moving = read_image(result["pairs"][0]["moving"]["geometry"])[0]
    assert moving.shape == (32, 40, 32) and moving.max() > 0


def test_the_model_row_runs_nnreg_register_with_the_model(tmp_path: Path) -> None:
    from tests.inference.helpers import small_model

    _, _, model = small_model(tmp_path / "model")
    dataset = make_learn2reg_dataset(tmp_path / "data", n_train=2, n_val=2)
    out = tmp_path / "bench"
    with pytest.raises(SystemExit, match="needs --model"):
        register.main(["--dataset", str(dataset), "--methods", "nnreg_model", "--output", str(out)])
    code = register.main(["--dataset", str(dataset), "--split", "train", "--pairs", "1", "--methods",
                          "nnreg_model,zero", "--model", str(model), "--sets", "geometry", "--threads", "1",
                          "--output", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    rows = {row["method"]: row for row in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["nnreg_model"]["status"] == "ok" and rows["nnreg_model"]["label"] == "nnreg_register -m MODEL"
    log = (out / "geometry" / "nnreg_model" / "pair00" / "register.log").read_text()
    assert f"model {model}" in log and "deformable from the network:" in log, log


def _zero_field_on_one_validation_pair(tmp_path: Path) -> tuple[Path, dict]:
    """A tiny dataset and the JSON of ``register.py`` scoring the zero field on its first validation pair, perturbed
    (geometry) and as the dataset has it (aligned)."""
    dataset = make_learn2reg_dataset(tmp_path / "data", n_train=2, n_val=2)
    code = register.main(["--dataset", str(dataset), "--split", "val", "--pairs", "1", "--methods", "zero",
                          "--sets", "geometry,aligned", "--output", str(tmp_path / "bench"), "--json",
                          str(tmp_path / "r.json")])
    assert code == 0
    return dataset, json.loads((tmp_path / "r.json").read_text())


def test_aligned_set_scores_the_pairs_as_the_dataset_has_them(tmp_path: Path) -> None:
    """The ``aligned`` set is the unperturbed pair with the dataset's own labels: its zero field scores what the
    evaluator gives the dataset pair itself, and the perturbed set's zero field scores lower."""
    from nnreg.evaluation import evaluate_pair
    from nnreg.evaluation.ground_truth import ground_truth_file, image_file, load_volume

    dataset, result = _zero_field_on_one_validation_pair(tmp_path)
    rows = {row["set"]: row for row in result["rows"]}
    fixed_rel, moving_rel = register.dataset_pairs(dataset, "val", 1)[0]
    assert result["pairs"][0]["moving"]["aligned"] == str(image_file(dataset.resolve(), moving_rel))
    def labels(rel: str) -> np.ndarray:
        return load_volume(ground_truth_file(dataset, rel, "labels"), "labels")

    expected = evaluate_pair(np.zeros((*read_image(image_file(dataset, fixed_rel))[0].shape, 3)), labels(fixed_rel),
                             labels(moving_rel), labels=register.config_labels(dataset))["dice"]
    assert rows["aligned"]["dice"] == pytest.approx(expected, abs=1e-9)
    assert rows["geometry"]["dice"] < rows["aligned"]["dice"] - 0.05


def test_a_field_is_carried_into_the_original_moving_voxels_through_the_generator() -> None:
    """``through_perturbation``: at sample voxels, ``x + u'(x)`` is the original moving image's index of
    ``S(q)``, ``q`` the physical point of ``x + u(x)``, with ``S`` applied by ITK point by point (independent of the
    sampled displacement the function interpolates); the record alone rebuilds ``S``."""
    image, labels = _subject()
    moved = pairs.perturb(image, GEOMETRY, labels, None, pairs.Perturbation(), seed=4, index=2)
    transform = pairs.rebuilt_transform(moved.record, GEOMETRY)
    original, _ = pairs.random_transform(GEOMETRY, pairs.Perturbation(), np.random.default_rng([4, 2]))
    probe = [1.0, -2.0, 3.0]
    assert np.allclose(transform.TransformPoint(probe), original.TransformPoint(probe))
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.normal(0, 3, (*GEOMETRY.shape, 3)), (3, 3, 3, 0)).astype(np.float32)
    carried = pairs.through_perturbation(field, GEOMETRY, transform)
    matrix = np.asarray(GEOMETRY.direction, float).reshape(3, 3) * np.asarray(GEOMETRY.spacing)
    inside = [tuple(v) for v in rng.integers(4, np.array(GEOMETRY.shape) - 4, (40, 3))]
    for voxel in inside:
        q = matrix @ (np.asarray(voxel) + field[voxel]) + np.asarray(GEOMETRY.origin)
        s_q = np.asarray(transform.TransformPoint([float(x) for x in q]))
        expected = _to_index(s_q[None], GEOMETRY)[:, 0] - np.asarray(voxel)
        np.testing.assert_allclose(carried[voxel], expected, atol=0.05)


def test_exact_scores_undo_the_generator(tmp_path: Path) -> None:
    """The perturbed pair's ideal field (the aligned pair's zero field carried through ``S^-1``, from ITK's
    displacement-field inversion) gets, scored exactly, the aligned pair's own Dice; scored against the resampled
    labels it loses some (the generator's nearest-neighbour loss the exact score removes)."""
    import SimpleITK as sitk

    dataset, result = _zero_field_on_one_validation_pair(tmp_path)
    record = result["pairs"][0]
    moving, geometry = read_image(record["moving"]["aligned"])
    transform = pairs.rebuilt_transform(record["transform"], geometry)
    forward = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, list(geometry.shape),
                                                list(geometry.origin), list(geometry.spacing),
                                                list(geometry.direction))
    inverse = sitk.InvertDisplacementField(forward, maximumNumberOfIterations=50, maxErrorToleranceThreshold=1e-4,
                                           meanErrorToleranceThreshold=1e-5, enforceBoundaryCondition=False)
    inverse_mm = sitk.GetArrayFromImage(inverse).transpose(2, 1, 0, 3)
    to_voxels = np.linalg.inv(np.asarray(geometry.direction, float).reshape(3, 3) * np.asarray(geometry.spacing))
    ideal = (inverse_mm @ to_voxels.T).astype(np.float32)                     # x -> index of S^-1(x)
    labels = register.config_labels(dataset)
    exact = scoring.exact_scores(ideal, record, labels)
    aligned = {row["set"]: row for row in result["rows"]}["aligned"]
    assert exact["dice_exact"] == pytest.approx(aligned["dice"], abs=0.02)
    resampled = scoring.score(ideal, record, Path(record["moving"]["geometry"]), labels, "geometry")
    assert resampled["dice"] < exact["dice_exact"]


def test_tuning_rows_parse_finer_keys_as_nnreg_predict_does() -> None:
    """``finer_*`` keys of a tuning row take the ``--finer-grid-settings`` syntax: typed, ``none`` allowed, a wrong
    value one line (the row's own loose parser read ``finer_finer_velocity=flase`` as false)."""
    from nnreg.utilities.errors import ConfigurationError

    settings = variants.variant_settings("steps=5,finer_parametrisation=displacement,finer_finer_velocity=false,"
                                         "finer_integration_steps=none,finer_lambda_reg=8")
    assert settings.deformable.steps == 5
    finer = settings.finer_grid
    assert (finer.parametrisation, finer.finer_velocity, finer.integration_steps, finer.lambda_reg) == \
        ("displacement", False, None, 8.0)
    assert finer.steps == variants.variant_settings("").finer_grid.steps        # untouched keys keep the default
    corrected = variants.variant_settings("finer_steps=6,correction_steps=0,correction_lambda_reg=5")
    assert (corrected.finer_grid.steps, corrected.correction.steps, corrected.correction.lambda_reg) == (6, 0, 5.0)
    assert corrected.correction.parametrisation == "displacement" and corrected.deformable == settings.deformable.\
        with_overrides({"steps": variants.variant_settings("").deformable.steps})
    with pytest.raises(ConfigurationError, match="finer_velocity"):
        variants.nnreg_variant("finer_finer_velocity=flase")
    with pytest.raises(ConfigurationError, match="parametrisation"):
        variants.nnreg_variant("finer_parametrisation=spline,finer_finer_velocity=false")


def test_centroid_landmarks_sit_on_each_structures_centroid() -> None:
    """Blob k: 7 voxels labelled k, centred on the rounded centroid of structure k (scipy's ``center_of_mass``);
    an absent structure has no blob, a blob at the grid's edge loses its outside voxels."""
    from benchmarks.landmark_proxy import centroid_landmarks

    _, labels = _subject()
    present = [10, 49]                                    # the synthetic subject's two deep structures (aseg ids)
    edge = np.zeros_like(labels)
    edge[0, 5, 5] = 99                                    # a one-voxel structure on the grid's first slice
    blobs = centroid_landmarks(labels + edge * (labels == 0), (*present, 12345, 99))
    for k, structure in enumerate(present, start=1):
        centre = np.floor(np.asarray(ndimage.center_of_mass(labels == structure)) + 0.5).astype(int)
        where = np.argwhere(blobs == k)
        assert len(where) == 7 and np.array_equal(where.mean(axis=0), centre)
    assert not np.any(blobs == len(present) + 1)          # structure 12345 is absent
    assert len(np.argwhere(blobs == len(present) + 2)) == 6


def test_training_pairs_get_centroid_landmarks_and_a_tre(tmp_path: Path) -> None:
    """A split without landmark files (training subjects) is scored on TRE too, through landmarks built from both
    label maps: the aligned zero field's TRE is the mean distance of the two images' rounded structure centroids
    (the synthetic subjects have two of the landmark structures, aseg 10 and 49)."""
    from nnreg.evaluation.ground_truth import ground_truth_file

    dataset = make_learn2reg_dataset(tmp_path / "data", n_train=2, n_val=2)
    fixed_rel, moving_rel = register.dataset_pairs(dataset, "train", 1)[0]
    fixed_labels, moving_labels = (read_image(ground_truth_file(dataset, rel, "labels"), dtype=np.int32)[0]
                                   for rel in (fixed_rel, moving_rel))
    structures = (10, 49)
    code = register.main(["--dataset", str(dataset), "--split", "train", "--pairs", "1", "--methods", "zero",
                          "--sets", "geometry,aligned", "--output", str(tmp_path / "bench"), "--json",
                          str(tmp_path / "r.json")])
    assert code == 0
    rows = {row["set"]: row for row in json.loads((tmp_path / "r.json").read_text())["rows"]}

    def centre(labels: np.ndarray, structure: int) -> np.ndarray:
        return np.floor(np.asarray(ndimage.center_of_mass(labels == structure)) + 0.5)

    expected = np.mean([np.linalg.norm(centre(fixed_labels, s) - centre(moving_labels, s)) for s in structures])
    assert rows["aligned"]["tre"] == pytest.approx(expected, abs=1e-6)
    assert math.isfinite(rows["geometry"]["tre"]) and math.isfinite(rows["geometry"]["tre_exact"])


def test_paired_comparisons_of_nnreg_against_each_anchor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Per set, nnreg minus each anchor that ran, pair by pair (pairs with a NaN score left out), with its bootstrap
    interval; the zero field and failed rows are no anchors; ``--report`` prints them from an earlier JSON."""
    from benchmarks import register_compare as compare

    def row(set_name: str, method: str, dice: list[float], status: str = "ok") -> dict:
        return {"set": set_name, "method": method, "label": method, "status": status,
                "pairs": [{"pair": i, "dice": d, "dice_exact": d + 0.01} for i, d in enumerate(dice)]}

    rows = [row("geometry", "nnreg", [0.72, 0.70, 0.74]), row("geometry", "greedy", [0.70, 0.71, math.nan]),
            row("geometry", "ants", [0.6, 0.6, 0.6], status="not installed"), row("geometry", "zero", [0.2] * 3),
            row("scanner", "greedy", [0.5] * 3)]
    entries = compare.comparisons(rows)
    assert [(e["set"], e["reference"], e["anchor"], e["score"]) for e in entries] == [
        ("geometry", "nnreg", "greedy", "Dice*"), ("geometry", "nnreg", "greedy", "Dice")]
    for entry in entries:
        assert entry["pairs"] == 2 and entry["ahead"] == 1
        assert entry["mean"] == pytest.approx(0.005)
        assert entry["ci95"][0] == pytest.approx(-0.01) and entry["ci95"][1] == pytest.approx(0.02)
    (tmp_path / "run.json").write_text(json.dumps({"rows": rows}))
    assert register.main(["--dataset", str(tmp_path), "--output", str(tmp_path), "--report",
                          str(tmp_path / "run.json")]) == 0
    assert "nnreg - greedy" in capsys.readouterr().out
