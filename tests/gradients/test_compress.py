"""The compression ablation's schemes (paper Fig. 6) against exact references."""

from __future__ import annotations

import torch

from diffattr.gradients.compress import dequantize_int8, quantize_dequantize, quantize_int8, svd_compress


def test_8_bit_quantisation_is_the_int8_the_scores_use():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    sizes = [30, 10]
    got, bits = quantize_dequantize(x, 8, sizes)
    torch.testing.assert_close(got, dequantize_int8(*quantize_int8(x, sizes), sizes), rtol=0, atol=0)
    assert bits == 8 * 40 + 32 * 2


def test_fewer_bits_lose_more():
    x = torch.randn(4, 500, generator=torch.Generator().manual_seed(1))
    errors = [(quantize_dequantize(x, b)[0] - x).norm() for b in (16, 8, 4, 2)]
    assert errors == sorted(errors) and errors[0] < 1e-3 * x.norm()


def test_svd_keeps_rank_r_matrices_and_vectors_exactly():
    g = torch.Generator().manual_seed(2)
    shapes = [(6, 2, 2, 2), (6,), (5, 4)]
    # row 0: every matrix of rank 2, so rank 2 is exact; the bias is kept in full
    conv = torch.randn(6, 2, generator=g) @ torch.randn(2, 8, generator=g)
    lin = torch.randn(5, 2, generator=g) @ torch.randn(2, 4, generator=g)
    row = torch.cat([conv.flatten(), torch.randn(6, generator=g), lin.flatten()])
    x = torch.stack([row, torch.randn(row.shape[0], generator=g)])
    got, bits = svd_compress(x, shapes, 2)
    torch.testing.assert_close(got[0], row, rtol=1e-5, atol=1e-5)
    assert bits == 32 * (2 * (6 + 8) + 6 + 2 * (5 + 4))
    full, _ = svd_compress(x, shapes, 100)  # rank above the matrices' size: nothing lost
    torch.testing.assert_close(full, x, rtol=1e-5, atol=1e-5)
    one, _ = svd_compress(x, shapes, 1)
    assert (one[1] - x[1]).norm() > (got[1] - x[1]).norm() > 0
