"""The papers' printed figures, in one place (see shared reference notes).

Each row names the model as `models.build` options plus an input resolution, so the
complexity counter, the tests and the ablation reports compare against the same facts.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class PaperRow:
  table: str
  label: str
  model: str
  options: dict[str, Any]
  resolution: int
  mult_adds_m: float  # million mult-adds as printed
  params_m: float | None  # million parameters as printed
  top1: float | None  # ImageNet top-1 accuracy in percent
  # Whether the printed mult-adds count the final classifier (MobileNet: yes;
  # ShuffleNet Tables 1-2: no; ShuffleNet Table 5: yes).
  with_classifier: bool = True


def _mobilenet(table, label, alpha, resolution, mult_adds, params, top1, variant="separable"):
  return PaperRow(table, label, "mobilenet_v1", {"alpha": alpha, "variant": variant},
                  resolution, mult_adds, params, top1)


MOBILENET_ROWS = (
    _mobilenet("4", "Conv MobileNet", 1.0, 224, 4866, 29.3, 71.7, variant="full"),
    _mobilenet("4", "MobileNet", 1.0, 224, 569, 4.2, 70.6),
    _mobilenet("5", "0.75 MobileNet", 0.75, 224, 325, 2.6, 68.4),
    _mobilenet("5", "Shallow MobileNet", 1.0, 224, 307, 2.9, 65.3, variant="shallow"),
    _mobilenet("6", "1.0 MobileNet-224", 1.0, 224, 569, 4.2, 70.6),
    _mobilenet("6", "0.75 MobileNet-224", 0.75, 224, 325, 2.6, 68.4),
    _mobilenet("6", "0.5 MobileNet-224", 0.5, 224, 149, 1.3, 63.7),
    _mobilenet("6", "0.25 MobileNet-224", 0.25, 224, 41, 0.5, 50.6),
    _mobilenet("7", "1.0 MobileNet-224", 1.0, 224, 569, 4.2, 70.6),
    _mobilenet("7", "1.0 MobileNet-192", 1.0, 192, 418, 4.2, 69.1),
    _mobilenet("7", "1.0 MobileNet-160", 1.0, 160, 290, 4.2, 67.2),
    _mobilenet("7", "1.0 MobileNet-128", 1.0, 128, 186, 4.2, 64.4),
    _mobilenet("9", "0.50 MobileNet-160", 0.5, 160, 76, 1.32, 60.2),
    _mobilenet("10", "0.75 MobileNet-192", 0.75, 192, 239, None, None),
)

# Paper Table 2: top-1 error (%) by scale and groups, and the printed complexity.
SHUFFLENET_TABLE2_ERROR = {
    1.0: {1: 33.6, 2: 32.7, 3: 32.6, 4: 32.8, 8: 32.4},
    0.5: {1: 45.1, 2: 44.4, 3: 43.2, 4: 41.6, 8: 42.3},
    0.25: {1: 57.1, 2: 56.8, 3: 55.0, 4: 54.2, 8: 52.7},
}
SHUFFLENET_TABLE2_MFLOPS = {1.0: 140, 0.5: 38, 0.25: 13}
# Paper Table 1: complexity at 1x by groups (mult-adds without the classifier).
SHUFFLENET_TABLE1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
# Paper Table 3: top-1 error (%) without / with channel shuffle.
SHUFFLENET_TABLE3_ERROR = {
    (1.0, 3): (34.5, 32.6), (1.0, 8): (37.6, 32.4),
    (0.5, 3): (45.7, 43.2), (0.5, 8): (48.1, 42.3),
    (0.25, 3): (56.3, 55.0), (0.25, 8): (56.5, 52.7),
}


def _shufflenet(table, label, scale, groups, mult_adds, error, with_classifier,
                variant="standard", shuffle=True):
  return PaperRow(table, label, "shufflenet_v1",
                  {"scale": scale, "groups": groups, "variant": variant, "shuffle": shuffle},
                  224, mult_adds, None, None if error is None else round(100.0 - error, 1),
                  with_classifier)


SHUFFLENET_ROWS = tuple(
    [_shufflenet("1", f"ShuffleNet 1x (g = {g})", 1.0, g, mflops,
                 SHUFFLENET_TABLE2_ERROR[1.0][g], False)
     for g, mflops in SHUFFLENET_TABLE1_MFLOPS.items()]
    + [_shufflenet("2", f"ShuffleNet {s}x (g = {g})", s, g, SHUFFLENET_TABLE2_MFLOPS[s],
                   SHUFFLENET_TABLE2_ERROR[s][g], False)
       for s in (0.5, 0.25) for g in SHUFFLENET_TABLE2_ERROR[s]]
    + [
        _shufflenet("5", "ShuffleNet 2x (g = 3)", 2.0, 3, 524, 26.3, True),
        _shufflenet("5", "ShuffleNet 1.5x (g = 3)", 1.5, 3, 292, 28.5, True),
        _shufflenet("5", "ShuffleNet 1x (g = 8)", 1.0, 8, 140, 32.4, True),
        _shufflenet("5", "ShuffleNet 0.5x (g = 4)", 0.5, 4, 38, 41.6, True),
        _shufflenet("5", "ShuffleNet 0.5x (shallow, g = 3)", 0.5, 3, 40, 42.8, True,
                    variant="shallow"),
    ])

# Table 3 prints no complexity: its models are Table 1's (1x) and Table 2's, whose figures
# (without the classifier) hold with or without the shuffle, which costs no mult-adds.
SHUFFLENET_TABLE3_ROWS = tuple(
    _shufflenet("3", f"ShuffleNet {scale:g}x (g = {groups}){'' if shuffle else ', no shuffle'}",
                scale, groups,
                SHUFFLENET_TABLE1_MFLOPS[groups] if scale == 1.0
                else SHUFFLENET_TABLE2_MFLOPS[scale],
                error, False, shuffle=shuffle)
    for (scale, groups), errors in SHUFFLENET_TABLE3_ERROR.items()
    for shuffle, error in zip((False, True), errors))

# The complexity tables: what `complexity --paper-tables` sets our counts beside.
ROWS = MOBILENET_ROWS + SHUFFLENET_ROWS
# Every printed model, Table 3's ablation included: what the report matches cells against.
ALL_ROWS = ROWS + SHUFFLENET_TABLE3_ROWS
