"""nnreg: self-configuring deep-learning registration for 3D brain MRI (Learn2Reg / LUMIR)."""

__version__ = "0.1.0"
