"""Which data a new run trains on, as its config records it (the keyword arguments of
:func:`shallowdeep.data.load_dataset`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..choices import DATASET, HOLDOUT_FRACTION, NORMALIZATION, SEED
from ..errors import SettingError


@dataclass(frozen=True)
class DataSettings:
    """A data set and how it is read and split. ``data_dir`` is needed by every data set but the bundled digits;
    ``download`` None leaves it out of the record (a study, which never downloads)."""

    name: str = DATASET
    data_dir: Path | None = None
    holdout_fraction: float = HOLDOUT_FRACTION
    seed: int = SEED
    limit: int | None = None
    download: bool | None = None
    normalization: str = NORMALIZATION
    image_size: int | None = None
    channels: int | None = None
    cache_dir: Path | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``load_dataset`` as a run records them: folders as absolute paths."""
        if self.data_dir is None and self.name != "digits":
            raise SettingError(f"the data set {self.name} needs the folder that holds it", "data_dir")
        return {"name": self.name, "data_dir": _absolute(self.data_dir), "holdout_fraction": self.holdout_fraction,
                "seed": self.seed, "limit": self.limit,
                **({} if self.download is None else {"download": self.download}),
                "normalization": self.normalization, **({"image_size": self.image_size} if self.image_size else {}),
                "channels": self.channels, **({"cache_dir": _absolute(self.cache_dir)} if self.cache_dir else {})}


def _absolute(path: Path | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path is not None else None
