"""Renumbering per-agent rows, for a detector forgetting idle agents (watcher/detect/forget.py).

`live` is the ascending array of the rows kept: old row live[i] becomes row i, so the rows kept keep their
order. Each part of the detector moves its own per-row arrays with `keep_rows` and its per-row dicts with
`renumber`.
"""

from __future__ import annotations

import numpy as np


def keep_rows(arr: np.ndarray, live: np.ndarray, size: int, fill=0) -> None:
    """Move rows `live` of `arr` to 0..len(live)-1; the rows after them, up to `size`, get `fill`."""
    k = len(live)
    arr[:k] = arr[live]
    arr[k:size] = fill


def renumber(live: np.ndarray) -> dict[int, int]:
    """old row -> new row, for the rows kept."""
    return {old: new for new, old in enumerate(live.tolist())}
