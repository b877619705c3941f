"""network_cost: counts checked against hand-computed values and against the real model."""
from __future__ import annotations

import math

from nnreg.networks import build_network, default_architecture, voxelmorph_architecture
from nnreg.networks.cost import network_cost

SHAPE = (32, 40, 32)


def voxelmorph_forward_flops(shape: tuple[int, int, int]) -> int:
    """2·MACs of every 3³ convolution of the LUMIR VoxelMorph at its resolution."""
    n = math.prod(shape)
    enc, dec = [16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]
    flops, prev = 0, 2
    for level, width in enumerate(enc):
        flops += 2 * 27 * prev * width * n // 8**level
        prev = width
    for i, width in enumerate(dec[:4]):
        flops += 2 * 27 * prev * width * n // 8 ** (4 - i)
        prev = width + enc[3 - i]
    for width in dec[4:]:
        flops += 2 * 27 * prev * width * n
        prev = width
    return flops + 2 * 27 * prev * 3 * n


def test_voxelmorph_flops_match_hand_count():
    shape = (32, 48, 32)  # divisible by 16, so every level has exactly n / 8**level voxels
    cost = network_cost(voxelmorph_architecture(), shape)
    assert cost["flops_forward"] == voxelmorph_forward_flops(shape)
    assert cost["parameters"] == sum(p.numel() for p in build_network(voxelmorph_architecture()).parameters())
    assert 2.5 < cost["flops_training_step"] / cost["flops_forward"] < 3.5  # backward ≈ 2× forward


def test_cascade_cost_scales_and_is_consistent():
    arch = default_architecture(4)
    one = network_cost(arch, SHAPE)
    two = network_cost(arch, SHAPE, batch_size=2)
    assert one["divisor"] == 8
    assert one["parameters"] == sum(p.numel() for p in build_network(arch).parameters())
    assert two["flops_forward"] == 2 * one["flops_forward"]
    assert 1.9 < two["activation_bytes"] / one["activation_bytes"] < 2.1
    # the encoder at full resolution: 27·(1·32 + 32·64 + 64·32) MACs per voxel and image, the largest term
    encoder = 2 * 2 * 27 * (32 + 32 * 64 + 64 * 32) * math.prod(SHAPE)
    assert encoder < one["flops_forward"] < 3 * encoder
    pair_features = 2 * 32 * math.prod(SHAPE) * 4  # cat(f + m, f - m) at full resolution, float32
    assert pair_features <= one["inference_peak_bytes"] < one["activation_bytes"]


def test_half_resolution_variant_is_cheaper_and_inference_only_mode():
    full = network_cost(default_architecture(4), SHAPE, training=False)
    half = network_cost(default_architecture(4, skip_levels=1), SHAPE, training=False)
    assert full["flops_training_step"] is None and full["activation_bytes"] is None
    assert 6 < full["flops_forward"] / half["flops_forward"] < 9  # roughly 8× fewer voxels
