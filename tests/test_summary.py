"""The cost summary against the paper's Tables 2 and 4, and against the model's own variables."""
import numpy as np
import pytest

from lowlevel import costs, summary
from lowlevel.nets.mobilenet import MobileNetV1

IMAGENET = dict(num_classes=1000, input_size=224, stem_stride=2)


@pytest.fixture(scope="module")
def imagenet():
    return MobileNetV1(**IMAGENET)


def test_imagenet_totals_match_paper_table_2(imagenet):
    t = costs.totals(costs.rows(imagenet))
    assert t.params == 4_231_976 and t.moving == 21_888
    assert abs(t.madds - 569e6) / 569e6 < 0.01  # paper: 569M
    shares = costs.by_op(costs.rows(imagenet))
    m_all = sum(m for m, _ in shares.values())
    assert abs(shares["Conv 1x1"][0] / m_all - 0.9486) < 0.001  # paper: 94.86%
    assert abs(shares["Conv DW 3x3"][0] / m_all - 0.0306) < 0.001  # paper: 3.06%
    p_all = sum(p for _, p in shares.values())
    assert abs(shares["Fully connected"][1] / p_all - 0.2433) < 0.001  # paper: 24.33%


def test_standard_variant_matches_paper_table_4():
    t = costs.totals(costs.rows(MobileNetV1(standard=True, **IMAGENET)))
    assert abs(t.params - 29.3e6) / 29.3e6 < 0.01 and abs(t.madds - 4866e6) / 4866e6 < 0.01


@pytest.mark.parametrize("kwargs, madds", [({}, 46.35e6), ({"standard": True}, 397.3e6)])
def test_cifar_defaults(kwargs, madds):
    t = costs.totals(costs.rows(MobileNetV1(**kwargs)))
    assert abs(t.madds - madds) / madds < 0.001


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.5, "standard": True}, {"alpha": 0.25, **IMAGENET}])
def test_rows_agree_with_the_variables(kwargs):
    model = MobileNetV1(**kwargs)
    table = costs.rows(model)
    assert sum(r.params for r in table) == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert sum(r.moving for r in table) == sum(int(np.prod(v.shape)) for v in model.non_trainable_variables)


def test_rows_agree_with_a_forward_pass():
    """The shapes are counted, not run; check them against a real forward pass once."""
    model = MobileNetV1(alpha=0.25)
    import tensorflow as tf
    x = tf.zeros([1, 32, 32, 3])
    x = model.stem(x)
    assert costs.rows(model)[0].shape == tuple(x.shape[1:])
    for block, row in zip(model.blocks, [r for r in costs.rows(model) if r.name.endswith(".pointwise")]):
        x = block(x, training=False)
        assert row.shape == tuple(x.shape[1:])
    row = costs.rows(model)[2]  # blocks[0].depthwise at 32x32, 8 channels
    assert row.madds == 32 * 32 * 9 * 8 and row.params == 9 * 8


def test_cli_table_and_errors(capsys):
    assert summary.main(["--alpha", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "blocks[12].pointwise" in out and "Conv 1x1" in out and "total:" in out
    assert summary.main(["--compare", "--input-size", "224", "--classes", "1000"]) == 0
    assert "standard / separable" in capsys.readouterr().out
    assert summary.main(["--input-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input size 8 is too small") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        summary.main(["--bogus"])
    assert e.value.code == 2
