"""Dataset fingerprint: what planning needs to know about the images, nothing more."""
from nnreg.fingerprint.extract import extract_fingerprint, fingerprint_image

__all__ = ["extract_fingerprint", "fingerprint_image"]
