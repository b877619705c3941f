"""Official config parsing and nnreg's merge of several configs."""
from __future__ import annotations

import pytest

from nnreg.evaluation.config import merge_configs, parse_config
from nnreg.utilities.errors import NnregError

PAIR_A = {"fixed": "./imagesVal/X_0002_0000.nii.gz", "moving": "./imagesVal/X_0001_0000.nii.gz"}
PAIR_B = {"fixed": "./imagesVal/X_0003_0000.nii.gz", "moving": "./imagesVal/X_0002_0000.nii.gz"}


def config(name: str, methods: list[dict], pairs: list[dict], **extra: object) -> dict:
    return {"name": name, "evaluation_methods": methods, "eval_pairs": pairs,
            "expected_shape": [12, 14, 10, 3], **extra}


SEG = [{"name": "DSC", "metric": "dice", "labels": [0, 1, 2]}, {"name": "HD95", "metric": "hd95", "labels": [0, 1]}]
LMS = [{"name": "Non-diffeomorphic Volumes", "metric": "ndv"}, {"name": "TRE_lm", "metric": "tre", "dest": "landmarks"}]


def test_parse_official_config() -> None:
    parsed = parse_config(config("LUMIR", SEG + LMS, [PAIR_A], masked_evaluation=True))
    assert parsed.name == "LUMIR" and parsed.expected_shape == (12, 14, 10, 3)
    assert [m.metric for m in parsed.methods] == ["dice", "hd95", "ndv", "tre"]
    assert parsed.methods[0].labels == (0.0, 1.0, 2.0) and parsed.methods[3].dest == "landmarks"
    assert all(m.masked for m in parsed.methods)
    assert parsed.pairs[0].key == "0002_0000<--0001_0000"


@pytest.mark.parametrize("method, message", [
    ({"name": "J", "metric": "jaccard"}, "unknown metric 'jaccard'"),
    ({"name": "DSC", "metric": "dice"}, "needs a 'labels' list"),
    ({"name": "TRE", "metric": "tre"}, "needs 'dest'"),
])
def test_bad_methods(method: dict, message: str) -> None:
    with pytest.raises(NnregError, match=message):
        parse_config(config("x", [method], [PAIR_A]))


def test_missing_pairs_is_an_error() -> None:
    with pytest.raises(NnregError, match="eval_pairs"):
        parse_config({"name": "x", "evaluation_methods": []})


def test_merge_keeps_both_configs_metrics_for_a_shared_pair() -> None:
    """Official: {**cases1, **cases2} keeps only config 2's metrics for PAIR_A; nnreg merges them."""
    name, plans = merge_configs([parse_config(config("seg", SEG, [PAIR_A])),
                                 parse_config(config("lms", LMS, [PAIR_A, PAIR_B]))])
    assert name == "lms"  # the last config's name, as the official to_json
    assert [p.pair.key for p in plans] == ["0002_0000<--0001_0000", "0003_0000<--0002_0000"]
    assert list(plans[0].methods) == ["DSC", "HD95", "Non-diffeomorphic Volumes", "TRE_lm"]
    assert list(plans[1].methods) == ["Non-diffeomorphic Volumes", "TRE_lm"]


def test_merge_same_metric_name_takes_the_later_config() -> None:
    later = [{"name": "DSC", "metric": "dice", "labels": [5]}]
    _, plans = merge_configs([parse_config(config("a", SEG, [PAIR_A])), parse_config(config("b", later, [PAIR_A]))])
    assert plans[0].methods["DSC"].labels == (5.0,)
