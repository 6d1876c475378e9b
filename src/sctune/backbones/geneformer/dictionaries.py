"""Geneformer dictionaries (token ids, gene medians, symbol -> Ensembl maps): JSON or safe pickle.

The original Geneformer dictionaries are pickles. They hold only plain dicts of strings, ints and
floats (the medians may be numpy scalar floats), so they are read with a restricted unpickler that
refuses every global except numpy's scalar reconstruction of numeric dtypes (and the latin-1
byte-string helper protocol 2 uses for its payload). Nothing else in a
pickle can run code here. Either format may be gzip-compressed.

The Geneformer V1 dictionaries ship inside the package (``data/``, Apache-2.0, see
``data/NOTICE``). A recipe names them ``builtin:v1`` instead of a path, so they do not depend on
the working directory or on a download.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

from sctune.core.errors import CheckpointError

_SCALAR_SITES = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_DTYPE_SITES = {("numpy", "dtype")}
_NUMERIC_KINDS = "biuf"
_BYTES_SITES = {("_codecs", "encode")}  # protocol 2 writes bytes as _codecs.encode(str, 'latin1')


BUILTIN_PREFIX = "builtin:"
DATA_DIR = Path(__file__).parent / "data"
# option -> built-in name -> file in DATA_DIR
BUILTIN = {
    "token_dictionary": {"v1": "v1_token_dictionary.json.gz"},
    "gene_median_dictionary": {"v1": "v1_gene_median_dictionary.json.gz"},
    "gene_name_id_dict": {"v1": "v1_gene_name_id_dict.json.gz"},
    "ensembl_mapping_dict": {},
}


def is_builtin(value: object) -> bool:
    """True for a ``builtin:<name>`` reference (a packaged dictionary, not a path)."""
    return isinstance(value, str) and value.startswith(BUILTIN_PREFIX)


def check_builtin(option: str, value: str) -> None:
    """Raise ``ValueError`` when ``value`` (``builtin:<name>``) names no packaged file for
    ``option``; a message for the recipe validator."""
    name = value[len(BUILTIN_PREFIX) :]
    known = BUILTIN.get(option, {})
    if name not in known:
        choices = ", ".join(f"'{BUILTIN_PREFIX}{k}'" for k in known) or "none"
        raise ValueError(f"no built-in {option.replace('_', ' ')} '{value}' (built-in: {choices})")


def dictionary_file(value: str | Path, option: str) -> Path:
    """The file behind an option value: the packaged file for ``builtin:<name>``, else the path
    (options without built-ins, such as ``model_config``, always take a path)."""
    if is_builtin(value) and option in BUILTIN:
        check_builtin(option, str(value))
        return DATA_DIR / BUILTIN[option][str(value)[len(BUILTIN_PREFIX) :]]
    return Path(value).expanduser()


def _safe_latin1(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 byte strings may be encoded")
    return text.encode("latin1")


def _safe_dtype(spec: object, *args: object) -> object:
    import numpy as np

    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype spec {spec!r} is not a string")
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy dtype '{spec}' is not numeric")
    return dtype


def _safe_scalar(dtype: object, data: object = None) -> int | float | bool:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not numeric")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar payload is not raw bytes of the dtype size")
    return np.frombuffer(data, dtype=dtype)[0].item()


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows builtin containers and scalars, plus numpy numeric scalars; refuses all else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _SCALAR_SITES:
            return _safe_scalar
        if (module, name) in _DTYPE_SITES:
            return _safe_dtype
        if (module, name) in _BYTES_SITES:
            return _safe_latin1
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _check_plain(obj: object, depth: int = 0) -> None:
    if depth > 4:
        raise pickle.UnpicklingError("nesting deeper than 4 levels")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, depth + 1)
        return
    raise pickle.UnpicklingError(f"object of type '{type(obj).__name__}' is not allowed")


def safe_unpickle(data: bytes) -> object:
    """Unpickle ``data`` allowing only plain containers, scalars and numpy numeric scalars."""
    obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    _check_plain(obj)
    return obj


def load_mapping(path: str | Path, *, what: str) -> dict[str, object]:
    """Read a ``{str: value}`` dictionary from a ``.json`` or pickle (``.pkl``/``.pickle``) file.

    Parameters
    ----------
    path
        The file, or ``builtin:<name>`` for a packaged dictionary. JSON is recognised by its
        suffix or its first byte; anything else is read as a pickle with the restricted
        unpickler. Gzip-compressed files (``.json.gz``, ``.pkl.gz``) are decompressed first.
    what
        A short name for messages, e.g. ``"token dictionary"``.

    Raises
    ------
    CheckpointError
        When the file is missing, unreadable, not a dict with string keys, or a pickle that needs
        anything beyond plain data.
    """
    if is_builtin(path):
        try:
            path = dictionary_file(path, what.replace(" ", "_"))
        except ValueError as exc:
            raise CheckpointError(f"geneformer {exc}") from exc
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"geneformer {what} '{path}' does not exist",
            hint="point the backbone option at the .json or .pkl file shipped with the model",
        )
    raw = path.read_bytes()
    suffixes = [s.lower() for s in path.suffixes]
    is_json = False
    try:
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.decompress(raw)
        is_json = ".json" in suffixes or raw.lstrip()[:1] in (b"{", b"[")
        obj = json.loads(raw.decode("utf-8")) if is_json else safe_unpickle(raw)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OSError,  # a damaged gzip stream (gzip.BadGzipFile)
    ) as exc:
        kind = "JSON" if is_json else "pickle"
        raise CheckpointError(
            f"geneformer {what} '{path}' could not be read as a safe {kind}: {exc}",
            hint="dictionaries may hold only dicts, lists, strings and numbers; "
            "convert the file to JSON if it holds anything else",
        ) from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(
            f"geneformer {what} '{path}' is not a dictionary with string keys "
            f"(got {type(obj).__name__})"
        )
    return obj


def load_token_dictionary(path: str | Path) -> dict[str, int]:
    """Token dictionary: gene id or special token -> int id (``<pad>`` must be present)."""
    raw = load_mapping(path, what="token dictionary")
    out: dict[str, int] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 0:
            raise CheckpointError(
                f"geneformer token dictionary '{path}': id of '{k}' is {v!r}, "
                "expected a non-negative integer"
            )
        out[k] = int(v)
    if "<pad>" not in out:
        raise CheckpointError(
            f"geneformer token dictionary '{path}' has no '<pad>' entry",
            hint="Geneformer token dictionaries start with '<pad>' = 0 and '<mask>' = 1",
        )
    if len(set(out.values())) != len(out):
        raise CheckpointError(f"geneformer token dictionary '{path}' maps two keys to one id")
    return out


def load_median_dictionary(path: str | Path) -> dict[str, float]:
    """Gene median dictionary: Ensembl id -> positive non-zero median of normalised expression."""
    raw = load_mapping(path, what="gene median dictionary")
    out: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise CheckpointError(
                f"geneformer gene median dictionary '{path}': median of '{k}' is {v!r}, "
                "expected a positive number"
            )
        out[k] = float(v)
    return out


def load_string_map(path: str | Path, *, what: str) -> dict[str, str]:
    """Symbol -> Ensembl id (name dict) or Ensembl id -> collapsed id (V2 mapping dict)."""
    raw = load_mapping(path, what=what)
    return {k: v for k, v in raw.items() if isinstance(v, str)}


def write_json(mapping: Mapping[str, object], path: str | Path) -> Path:
    """Write a dictionary as JSON (used for derived and example dictionaries)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(mapping), indent=0), encoding="utf-8")
    return path
