"""V2 payload parsing: the two tensor layouts, refusals with messages, score reading, perturbation."""

from __future__ import annotations

import orjson
import pytest

from serving import v2

FEATURES = ["a", "b", "c"]


def _body(**payload: object) -> bytes:
    return orjson.dumps(payload)


def _tensor(shape: object, data: list, datatype: str = "FP64", name: str = "x") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_one_tensor_rows_become_named_columns() -> None:
    body = _body(
        id="r1", parameters={"entity_key": 42}, inputs=[_tensor([2, 3], [[1, 2, 3], [4, 5, 6]], name="input-0")]
    )
    parsed = v2.parse_request(body, FEATURES)
    assert parsed.rows == 2
    assert parsed.columns == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    assert (parsed.entity_key, parsed.request_id) == ("42", "r1")


def test_one_tensor_per_feature_is_accepted() -> None:
    inputs = [_tensor([2], [i, i + 1], "FP32", name=n) for i, n in enumerate(FEATURES)]
    assert v2.parse_request(_body(inputs=inputs), FEATURES).columns["c"] == [2, 3]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "JSON object"),
        (_body(inputs=[]), "non-empty 'inputs'"),
        (_body(inputs=[_tensor([1, 3], [1, 2])]), "needs 3 values"),
        (_body(inputs=[_tensor([1, 2], [1, 2])]), "expected 3 features"),
        (_body(inputs=[_tensor([1, 3], [1, 2, 3], "FP99")]), "datatype"),
        (_body(inputs=[_tensor([1, 3], [1, "a", 3])]), "non-number"),
        (_body(inputs=[_tensor("1,3", [1, 2, 3])]), "shape"),
        (_body(inputs=[_tensor([2], [1, 2], name="a"), _tensor([3], [1, 2, 3], name="b")]), "rows"),
    ],
)
def test_bad_payloads_are_refused_with_a_message(body: bytes, message: str) -> None:
    with pytest.raises(v2.BadRequest, match=message):
        v2.parse_request(body, FEATURES)


def test_scores_read_the_configured_output_and_perturbation_clips() -> None:
    one_col = _body(outputs=[_tensor([2, 1], [0.2, 0.9], name="predict_proba")])
    two_col = _body(outputs=[_tensor([2, 2], [[0.8, 0.2], [0.1, 0.9]], name="predict_proba")])
    flat = _body(outputs=[_tensor([2], [0.3, 0.7], name="predict")])
    assert v2.scores(one_col, v2.OutputSpec()) == [0.2, 0.9]
    assert v2.scores(two_col, v2.OutputSpec(column=1)) == [0.2, 0.9]
    assert v2.scores(two_col, v2.OutputSpec(column=0)) == [0.8, 0.1]
    assert v2.scores(flat, v2.OutputSpec(tensor="predict")) == [0.3, 0.7]
    assert v2.scores(two_col, v2.OutputSpec()) is None
    assert v2.scores(b"oops", v2.OutputSpec()) is None
    _, shifted = v2.perturb(one_col, 0.4, v2.OutputSpec())
    assert shifted == pytest.approx([0.6, 1.0])


@pytest.mark.parametrize(
    ("outputs", "output", "rows", "message"),
    [
        (
            [_tensor([2, 2], [1, 0, 0, 1], name="predict_proba")],
            {},
            2,
            r"2 columns .* set mlrelease:model\.output\.column",
        ),
        ([_tensor([2], [1, 0], name="predict")], {}, 2, r"not 'predict_proba'.*predict_fn"),
        ([_tensor([2, 2], [1, 0, 0, 1], name="p")], {"tensor": "p", "column": 2}, 2, r"column = 2.*2 column"),
        ([_tensor([4], [1, 0, 0, 1], name="predict_proba")], {}, 2, "4 rows for 2 input rows"),
        ([_tensor([1], ["a"], "BYTES", name="predict_proba")], {}, 1, "non-numeric"),
    ],
)
def test_read_scores_names_the_fix(outputs: list, output: dict, rows: int, message: str) -> None:
    with pytest.raises(v2.OutputMismatch, match=message):
        v2.read_scores(orjson.loads(_body(outputs=outputs)), v2.OutputSpec(**output), rows)
