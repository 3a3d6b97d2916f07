"""A pickle reader for the official CIFAR files that cannot run code.

CIFAR batches are pickled dicts of str/bytes/int/list and numpy arrays. The unpickler resolves only the
few globals those files use (numpy array and dtype reconstruction, and ``_codecs.encode`` that Python 3
protocol-2 pickles use for bytes, limited to latin-1); any other global is refused before it is called.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from shallowdeep.errors import UserError

_reconstruct = np.empty(0).__reduce__()[0]  # numpy's array rebuilder, whatever module it lives in


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to what pickle protocol 2 uses for bytes objects."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only callables are numpy array/dtype reconstruction and latin-1 encoding."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def load_pickle(path: str | Path) -> Any:
    """Read one official-format pickle file with :class:`RestrictedUnpickler` (bytes stay bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(f"cannot read {path} as an official data pickle ({err}); re-download the data set") from None
