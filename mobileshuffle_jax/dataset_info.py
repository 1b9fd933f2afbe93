"""What every data source tells the train loop, and how it refuses: no TensorFlow here."""

from __future__ import annotations

import dataclasses


class DataError(ValueError):
  """A data set that is missing, unprepared or unusable; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What training needs to know about a prepared data set (counts over all hosts)."""

  name: str
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  class_names: tuple[str, ...] = ()
  # Files that could not be decoded when an image folder was prepared (relative to its root).
  skipped_files: tuple[str, ...] = ()
