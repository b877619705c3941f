"""An image registered to itself: the affine stage must return the identity (a smooth blob, the textured phantom).

Two causes, one per image: the stage's NCC was ``cross^2 / (var_i var_j + eps)``, which pays for moving contrast
brought into the fixed image's low-variance windows (the blob came back shrunk to scales ~0.8 and turned 11 degrees,
a real brain to scales 0.996); and each stage handed over Adam's last iterate, which wanders about the optimum (the
phantom, whose loss was already best at the identity, came back up to 0.08 mm off)."""
from __future__ import annotations

import numpy as np
import torch

from nnreg.alignment import AffineSettings, register_affine
from nnreg.alignment.affine import AffineResult
from nnreg.alignment.sampling import centre_of_mass, sample_affine
from nnreg.alignment.similarity import weighted_ncc_loss
from nnreg.dataset.image_io import Geometry
from nnreg.registration.normalization import normalise
from tests.alignment.phantom import SHAPE, array, phantom

BLOB_SHAPE = (24, 28, 20)


def blob() -> tuple[np.ndarray, Geometry]:
    """A smooth anisotropic Gaussian blob (no texture, tails down to ~1e-7) on a 2 mm grid, centred near 0."""
    axes = [(np.arange(n) - (n - 1) / 2) * 2.0 for n in BLOB_SHAPE]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    r2 = ((grid / np.array([10.0, 13.0, 8.0])[:, None, None, None]) ** 2).sum(0)
    geometry = Geometry(BLOB_SHAPE, (2.0,) * 3, tuple(-(n - 1) for n in BLOB_SHAPE), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return (100.0 * np.exp(-r2)).astype(np.float32), geometry


def phantom_image() -> tuple[np.ndarray, Geometry]:
    geometry = Geometry(SHAPE, (2.0,) * 3, tuple(-(n - 1) for n in SHAPE), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return array(phantom()[0]), geometry


def register_to_itself(image: np.ndarray, geometry: Geometry) -> AffineResult:
    tensor = torch.from_numpy(normalise(image))[None, None]
    return register_affine(tensor, geometry, tensor.clone(), geometry, AffineSettings())


def assert_identity(result: AffineResult, image: np.ndarray, geometry: Geometry) -> None:
    scales = np.linalg.svd(result.matrix, compute_uv=False)
    assert np.abs(scales - 1).max() < 1e-3, scales
    assert np.abs(result.matrix - np.eye(3)).max() < 2e-3, result.matrix      # rotation below ~0.1 degree
    assert np.abs(result.translation).max() < 0.05, result.translation
    index = np.argwhere(image > 0.01 * image.max()).astype(np.float64)
    points = index * 2.0 + np.asarray(geometry.origin)
    moved = points @ result.homogeneous[:3, :3].T + result.homogeneous[:3, 3]
    assert np.linalg.norm(moved - points, axis=1).max() < 0.05                 # mm, over the whole object


def test_a_smooth_blob_registered_to_itself_gives_the_identity() -> None:
    image, geometry = blob()
    assert_identity(register_to_itself(image, geometry), image, geometry)


def test_the_textured_phantom_registered_to_itself_gives_the_identity() -> None:
    image, geometry = phantom_image()
    assert_identity(register_to_itself(image, geometry), image, geometry)


def test_the_ncc_of_an_image_with_itself_is_best_at_the_identity() -> None:
    """The similarity itself, at the finest (2 mm) level: no shrink, stretch or turn about the centre of mass beats
    the identity (the training loss's eps made a 2 % shrink of the blob 0.015 better)."""
    for image, geometry in (blob(), phantom_image()):
        tensor = torch.from_numpy(normalise(image))[None, None]
        centre = centre_of_mass(tensor[0, 0].numpy(), geometry)

        def loss(matrix: np.ndarray) -> float:
            transform = np.eye(4)
            transform[:3, :3] = matrix
            transform[:3, 3] = centre - matrix @ centre
            warped = sample_affine(tensor, geometry, geometry, torch.from_numpy(transform))
            return float(weighted_ncc_loss(tensor, warped, None, AffineSettings().ncc_window))

        at_identity = loss(np.eye(3))
        turn = np.array([[1.0, -0.03, 0.0], [0.03, 1.0, 0.0], [0.0, 0.0, 1.0]])
        for matrix in (0.98 * np.eye(3), 0.995 * np.eye(3), 1.02 * np.eye(3), np.diag([0.98, 1.0, 1.01]), turn):
            assert loss(matrix) > at_identity, (matrix, loss(matrix), at_identity)
