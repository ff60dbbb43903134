"""gnorm.importers.plain: what the papers' numpy arrays become in the store (JSON data)."""

import json
import math

import numpy as np
import pytest

from gnorm.importers import plain


@pytest.mark.parametrize("value, expected", [
    (np.array([1.0, np.nan, np.inf, -np.inf]), [1.0, None, None, None]),
    (np.array([[1.5, 2.0], [np.nan, 3.0]], dtype=np.float32), [[1.5, 2.0], [None, 3.0]]),
    (np.arange(3, dtype=np.int8), [0, 1, 2]),
    (np.array([True, False]), [True, False]),
    (np.array(2.5), 2.5),
    (np.float32(np.nan), None),
    (np.int64(7), 7),
    (float("inf"), None),
    ("denserho", "denserho"),
    (np.array([1, None, np.nan], dtype=object), [1, None, None]),
    (np.zeros((2, 0)), [[], []]),
])
def test_numpy_values_become_plain_json_with_none_for_every_non_finite_number(value, expected):
    converted = plain(value)
    assert converted == expected
    assert json.loads(json.dumps(converted, allow_nan=False)) == expected  # strict JSON: no NaN left


def test_a_converted_float_keeps_its_exact_value_and_type():
    values = np.array([0.1, 1 / 3, 1e-300], dtype=np.float64)
    converted = plain(values)
    assert all(type(v) is float for v in converted)
    assert converted == [float(v) for v in values] and not any(math.isnan(v) for v in converted)
    assert type(plain(np.arange(2))[0]) is int and type(plain(np.array([True]))[0]) is bool
