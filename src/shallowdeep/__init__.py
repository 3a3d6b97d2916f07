"""shallowdeep: Shallow-Deep Networks (Kaya et al., ICML 2019) for any CNN."""

__version__ = "0.1.0"
