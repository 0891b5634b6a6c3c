"""clm_torch: deep learning for customer lifecycle management."""

__version__ = "0.1.0"
