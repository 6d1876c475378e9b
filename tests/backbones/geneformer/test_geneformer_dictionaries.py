"""Geneformer dictionaries: JSON and pickle, with a restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from sctune.backbones.geneformer.dictionaries import (
    load_median_dictionary,
    load_token_dictionary,
    safe_unpickle,
)
from sctune.core.errors import CheckpointError


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sctune_geneformer_pwned",))


def test_plain_and_numpy_scalar_pickles_load(tmp_path):
    tokens = {"<pad>": 0, "<mask>": 1, "ENSG00000000003": 2}
    (tmp_path / "tok.pkl").write_bytes(pickle.dumps(tokens))
    assert load_token_dictionary(tmp_path / "tok.pkl") == tokens
    medians = {"ENSG00000000003": np.float64(2.5), "ENSG00000000005": np.float32(0.25)}
    for protocol in (2, 4, 5):
        (tmp_path / "med.pickle").write_bytes(pickle.dumps(medians, protocol=protocol))
        loaded = load_median_dictionary(tmp_path / "med.pickle")
        assert loaded == {"ENSG00000000003": 2.5, "ENSG00000000005": 0.25}
        assert all(type(v) is float for v in loaded.values())
    ints = {"<pad>": np.int64(0), "A": np.int32(3)}
    assert load_token_dictionary_from(tmp_path, ints) == {"<pad>": 0, "A": 3}


def load_token_dictionary_from(tmp_path, obj):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(obj))
    return load_token_dictionary(path)


@pytest.mark.parametrize(
    "payload",
    [
        {"<pad>": _Evil()},
        _Evil(),
        {"<pad>": np.array([1, 2])},  # ndarray reconstruction is not allowed
        {"<pad>": np.dtype("O")},  # only numeric dtypes
        __import__("collections").OrderedDict(a=1),  # any other global is refused
        {"<pad>": {1, 2}},  # a set is not plain data here
    ],
)
def test_malicious_or_non_plain_pickles_are_refused(tmp_path, payload):
    path = tmp_path / "token_dictionary_gc30M.pkl"
    path.write_bytes(pickle.dumps(payload))
    marker = "/tmp/sctune_geneformer_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(CheckpointError) as err:
        load_token_dictionary(path)
    assert str(path) in err.value.message and "safe pickle" in err.value.message
    assert not os.path.exists(marker)


def test_object_dtype_scalar_refused():
    # numpy scalar reconstruction with an object dtype must not be accepted
    data = pickle.dumps({"a": np.float64(1.5)}, protocol=2).replace(b"f8", b"O8")
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(data)


def test_json_and_errors(tmp_path):
    (tmp_path / "t.json").write_text('{"<pad>": 0, "<mask>": 1, "ENSG1": 2}')
    assert load_token_dictionary(tmp_path / "t.json")["ENSG1"] == 2
    (tmp_path / "nopad.json").write_text('{"ENSG1": 0}')
    with pytest.raises(CheckpointError, match="has no '<pad>' entry"):
        load_token_dictionary(tmp_path / "nopad.json")
    (tmp_path / "bad.json").write_text('{"ENSG1": -3}')
    with pytest.raises(CheckpointError, match="expected a positive number"):
        load_median_dictionary(tmp_path / "bad.json")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_token_dictionary(tmp_path / "missing.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="not a dictionary"):
        load_token_dictionary(tmp_path / "list.pkl")
