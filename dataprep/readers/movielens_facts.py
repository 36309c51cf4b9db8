"""Facts about the MovieLens sources that readers of their prepared data need.

ML-1M records a user's age as a band code (its README: 1 "Under 18", 18 "18-24",
25 "25-34", 35 "35-44", 45 "45-49", 50 "50-55", 56 "56+"); ML-100K records years.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import polars as pl

ML1M_AGE_BAND_STARTS = (18, 25, 35, 45, 50, 56)  # each band's first year, after "Under 18"


def age_bands(age: pl.Series) -> np.ndarray:
    """One band label per user, comparable across both sources: ML-100K years are banded
    as ML-1M bands them (band index as a string), ML-1M codes are kept."""
    # polars types max() as any scalar; a numeric column's is a number
    if age.dtype.is_numeric() and cast(float, age.max()) > ML1M_AGE_BAND_STARTS[-1]:
        return np.digitize(age.to_numpy(), ML1M_AGE_BAND_STARTS).astype(str)
    return age.cast(pl.String).to_numpy()
