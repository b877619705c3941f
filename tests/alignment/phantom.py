"""A tiny textured "brain" for the alignment and registration tests, and SimpleITK helpers to move it.

The phantom is an ellipsoid (radii 30, 36, 27 mm: no rotational symmetry) filled with a smooth random texture
(so the affine is well determined and local NCC has structure everywhere), with a label map (3 classes from the
texture) and 0 outside. Images are SimpleITK images (LPS geometry); arrays in the tests are (i, j, k).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

SHAPE = (40, 48, 40)
SPACING = 2.0


def phantom(seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """(image in [0, 200], labels) on a 2 mm grid of :data:`SHAPE`, identity direction, centred near 0."""
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n) - (n - 1) / 2) * SPACING for n in SHAPE]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    r = np.sqrt(((grid / np.array([30.0, 36.0, 27.0])[:, None, None, None]) ** 2).sum(0))
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.5)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    inside = r < 1.0
    image = np.where(inside, 60.0 + 140.0 * texture, 0.0).astype(np.float32)
    labels = np.where(inside, 1 + np.digitize(texture, np.quantile(texture[inside], [1 / 3, 2 / 3])), 0)
    return to_image(image), to_image(labels.astype(np.int16))


def to_image(array: np.ndarray, spacing: float = SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin(tuple(-(n - 1) / 2 * spacing for n in array.shape))
    return image


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def affine(degrees: tuple[float, float, float], scales: tuple[float, float, float],
           shift: tuple[float, float, float]) -> sitk.AffineTransform:
    """Rotation (degrees about x, y, z) times scales, about the origin, plus a shift (mm)."""
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*np.radians(degrees))
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((np.asarray(euler.GetMatrix()).reshape(3, 3) @ np.diag(scales)).ravel().tolist())
    transform.SetTranslation(shift)
    return transform


def moved(image: sitk.Image, transform: sitk.Transform, labels: bool = False) -> sitk.Image:
    """``image`` resampled on its own grid at ``transform(p)``: the moved copy (a pull, as ITK)."""
    return sitk.Resample(image, image, transform, sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, 0)


def reoriented(image: sitk.Image, spacing: tuple[float, float, float], labels: bool = False) -> sitk.Image:
    """The same physical image given with permuted/flipped axes (direction not the identity) and another spacing."""
    direction = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)   # columns: directions of axes i, j, k
    size = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    extent = np.abs(direction.T @ size)
    shape = [int(round(e / s)) for e, s in zip(extent, spacing)]
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    origin = centre - direction @ ((np.asarray(shape) - 1) / 2 * np.asarray(spacing))
    reference = sitk.Image(shape, image.GetPixelID())
    reference.SetSpacing(spacing)
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin(origin.tolist())
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                         0)
