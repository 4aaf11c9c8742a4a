"""fastgw: a multi-tenant API gateway (uvloop + httptools + Cython kernels)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
