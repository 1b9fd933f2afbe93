"""The complexity counter against the papers' printed figures (no compilation)."""

import json

import pytest

from mobileshuffle_jax import complexity, models, paper

MOBILENET_PARAMS = {1.0: 4_231_976, 0.75: 2_585_560, 0.5: 1_331_592, 0.25: 470_072}
SHUFFLENET_1X_PARAMS = {1: 1_531_936, 2: 1_733_848, 3: 1_865_728, 4: 1_968_344,
                        8: 2_434_768}


@pytest.mark.parametrize("alpha,expected", MOBILENET_PARAMS.items())
def test_mobilenet_params_exact(alpha, expected):
  assert complexity.count(models.build("mobilenet_v1", alpha=alpha), 224).params == expected


@pytest.mark.parametrize("groups,expected", SHUFFLENET_1X_PARAMS.items())
def test_shufflenet_params_exact(groups, expected):
  model = models.build("shufflenet_v1", groups=groups, scale=1.0)
  assert complexity.count(model, 224).params == expected


def test_per_layer_rows_add_up_to_the_parameter_tree():
  result = complexity.count(models.build("shufflenet_v1", groups=8, scale=0.5), 160)
  assert sum(layer.params for layer in result.layers) == result.params
  assert result.mult_adds_classifier == 768 * 1000


@pytest.mark.parametrize("row", paper.MOBILENET_ROWS, ids=lambda r: f"T{r.table}-{r.label}")
def test_mobilenet_mult_adds_match_paper(row):
  ours = complexity.count(models.build(row.model, **row.options), row.resolution).mult_adds
  tolerance = 0.01 * row.mult_adds_m * 1e6 if row.options["variant"] == "full" else 1e6
  assert abs(ours - row.mult_adds_m * 1e6) <= tolerance
  if row.params_m is not None:
    params = complexity.count(models.build(row.model, **row.options), row.resolution).params
    assert abs(params / 1e6 - row.params_m) <= 0.051


@pytest.mark.parametrize("scale,groups", [(s, g) for s in (1.0, 0.5, 0.25)
                                          for g in models.shufflenet_v1.GROUPS])
def test_shufflenet_mult_adds_without_classifier(scale, groups):
  result = complexity.count(models.build("shufflenet_v1", groups=groups, scale=scale), 224)
  ours = result.mult_adds - result.mult_adds_classifier
  if scale == 1.0:
    assert abs(ours - paper.SHUFFLENET_TABLE1_MFLOPS[groups] * 1e6) <= 1e6
  else:
    printed = paper.SHUFFLENET_TABLE2_MFLOPS[scale] * 1e6
    assert abs(ours - printed) <= 0.10 * printed


@pytest.mark.parametrize("scale,printed_m", [(1.5, 292), (2.0, 524)])
def test_shufflenet_table5_with_classifier(scale, printed_m):
  result = complexity.count(models.build("shufflenet_v1", groups=3, scale=scale), 224)
  assert abs(result.mult_adds - printed_m * 1e6) <= 0.01 * printed_m * 1e6


def test_no_shuffle_changes_nothing_countable():
  with_shuffle = complexity.count(models.build("shufflenet_v1", groups=8), 224)
  without = complexity.count(models.build("shufflenet_v1", groups=8, shuffle=False), 224)
  assert with_shuffle.as_dict() == without.as_dict()


def test_cli_json(capsys):
  complexity.main(["--model", "mobilenet_v1", "--width", "0.5", "--resolution", "160",
                   "--json"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["params"] == 1_331_592
  assert out["mult_adds"] == 76_524_800
  assert out["mult_adds_classifier"] == 512_000


def test_cli_table_and_paper_tables(capsys):
  complexity.main(["--model", "shufflenet_v1", "--groups", "3", "--scale", "0.5",
                   "--no-shuffle"])
  table = capsys.readouterr().out
  assert "stage4_unit4/expand/conv" in table and "total" in table
  complexity.main(["--paper-tables"])
  tables = capsys.readouterr().out
  assert "MobileNet paper Table 7" in tables and "ShuffleNet paper Table 2" in tables


def test_cli_rejects_bad_width():
  with pytest.raises(SystemExit):
    complexity.main(["--model", "mobilenet_v1", "--width", "0"])
