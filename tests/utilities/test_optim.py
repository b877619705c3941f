"""nnreg's own Adam (affine stage, refinement): torch.optim.Adam's update, without the seconds of importing
torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import torch

from nnreg.utilities.optim import Adam


def test_adam_matches_torch_optim_adam() -> None:
    torch.manual_seed(0)
    start = [torch.randn(3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    a = Adam([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]], "lr": 0.01}])
    b = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.1}, {"params": [theirs[1]], "lr": 0.01}])
    for step in range(25):
        for params, optimizer in ((ours, a), (theirs, b)):
            for group in optimizer.param_groups:          # the affine stage decays the rates in place
                group["lr"] *= 0.97
            optimizer.zero_grad(set_to_none=True)
            ((params[0] - 1) ** 4).sum().add(torch.sin(params[1]).sum() * step).backward()
            optimizer.step()
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def _imports_dynamo(*lines: str) -> bool:
    """Whether running ``lines`` in a fresh interpreter imports torch._dynamo (``torch.optim`` optimisers do, on
    first use: 2-5 s of nnreg_register's run)."""
    code = "\n".join(("import sys, torch", *lines, "print('torch._dynamo' in sys.modules)")) + "\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] != "False"


def test_affine_stage_does_not_import_torch_dynamo() -> None:
    assert not _imports_dynamo(
        "from nnreg.alignment import AffineSettings, register_affine",
        "from nnreg.dataset.image_io import Geometry",
        "g = Geometry((16, 16, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))",
        "x = torch.zeros(1, 1, 16, 16, 16); x[..., 4:12, 5:12, 4:11] = 1",
        "register_affine(x, g, x.roll(1, 2), g, AffineSettings(stages=(('rigid', 2, 3), ('affine', 1, 3))))")


def test_refinement_does_not_import_torch_dynamo() -> None:
    assert not _imports_dynamo(
        "from nnreg.inference.instance_optimization import InstanceOptimization, refine_field",
        "x = torch.zeros(1, 1, 12, 12, 12); x[..., 3:9, 4:9, 3:8] = 1",
        "refine_field(x, x.roll(1, 2), torch.zeros(1, 3, 12, 12, 12), InstanceOptimization(steps=3, fine_steps=2))")


def test_the_check_sees_torch_optim() -> None:
    """The check itself: torch.optim.Adam's first use does import torch._dynamo (else the tests above prove nothing)."""
    assert _imports_dynamo("torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=0.1)")
