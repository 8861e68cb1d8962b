"""Model families. Each registers `model.<name>` and an `objective.<name>` for the trainer."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Objective(NamedTuple):
  """What a model family gives the one trainer.

  init: (rng, batch) -> boxed params; `batch` holds arrays or ShapeDtypeStructs of one batch.
  loss: (params, batch, rng, train) -> (scalar loss, dict of scalar metrics).
  """

  init: Callable[[Any, dict[str, Any]], Any]
  loss: Callable[..., tuple[Any, dict[str, Any]]]
