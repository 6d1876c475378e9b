"""Tokenized cells cached on disk, keyed by the data, the vocabulary and the tokenizer settings.

A run (and ``sctune validate``, a rerun, every cell of a benchmark grid over adapters) tokenizes
the same cells with the same backbone options. :func:`tokenize_cached` stores the result once,
as one flat array per field plus the cells' offsets (``.npy``, memory-mapped on reading), under
``<cache dir>/tokens/<key>/``. The key is a sha256 over

- the expression matrix (CSR arrays), its kind, genes, alternate identifiers, library sizes;
- the backbone's name and every option, with files named by an option (vocabulary, gene
  dictionaries; small files inside a checkpoint folder) replaced by their content hash;
- the source of the backbone plugin's package (a changed tokenizer never reads old tokens);
- the tokenization seed and this module's format version.

The cache folder is ``data.cache_dir``, else ``$SCTUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/sctune`` (``~/.cache/sctune``). Delete it at any time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path, PurePath
from typing import Any

import numpy as np

FORMAT = 1
HASHED_FILE_LIMIT = 64 * 2**20  # larger files (weights) enter the key by size and mtime


class Ragged(Sequence[np.ndarray]):
    """Variable-length rows stored as one flat array and ``offsets`` (``len(rows) + 1``)."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.flat[self.offsets[i] : self.offsets[i + 1]]


def default_cache_dir() -> Path:
    env = os.environ.get("SCTUNE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sctune"


def _file_digest(path: Path) -> str:
    st = path.stat()
    if st.st_size > HASHED_FILE_LIMIT:
        return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
    from sctune.core.artifacts import sha256_file

    return sha256_file(path)


def _option_value(value: Any) -> Any:
    """Paths become content hashes, so a vocabulary copied elsewhere still hits the cache."""
    if isinstance(value, str) and value and len(value) < 4096:
        path = Path(value).expanduser()
        try:
            if path.is_file():
                return {"file": _file_digest(path)}
            if path.is_dir():
                return {
                    "dir": {p.name: _file_digest(p) for p in sorted(path.iterdir()) if p.is_file()}
                }
        except OSError:
            return value
    if isinstance(value, dict):
        return {k: _option_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_option_value(v) for v in value]
    return value


def _options(config: Any) -> Any:
    """The backbone options for a cache key: as dumped, except that every path option is the
    path the plugin resolved (a packaged file or folder named in the recipe, e.g.
    ``builtin:<name>``, is hashed by content like any other path)."""
    from sctune.core.paths import is_path_field

    dumped = config.model_dump(mode="json")
    fields = type(config).model_fields
    for key, value in dict(config).items():
        path_field = key in fields and is_path_field(fields[key])
        if isinstance(value, PurePath) or (path_field and isinstance(value, str)):
            alias = fields[key].alias if key in fields else None
            dumped[alias if alias in dumped else key] = str(value)
    return _option_value(dumped)


def _plugin_source(backbone: Any) -> str:
    """sha256 of the ``.py`` files of the backbone plugin's package."""
    h = hashlib.sha256()
    try:
        folder = Path(inspect.getfile(type(backbone))).parent
        for f in sorted(folder.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    except (TypeError, OSError):
        h.update(type(backbone).__qualname__.encode())
    return h.hexdigest()


def cache_key(backbone: Any, config: Any, expr: Any, *, seed: int) -> str:
    from scipy import sparse

    h = hashlib.sha256()
    head = {
        "format": FORMAT,
        "backbone": backbone.name,
        "options": _options(config),
        "plugin_source": _plugin_source(backbone),
        "seed": seed,
        "kind": expr.kind,
        "genes": hashlib.sha256("\n".join(expr.genes).encode()).hexdigest(),
        "symbols": None
        if expr.gene_symbols is None
        else hashlib.sha256("\n".join(expr.gene_symbols).encode()).hexdigest(),
        "ids": None
        if expr.gene_ids is None
        else hashlib.sha256("\n".join(expr.gene_ids).encode()).hexdigest(),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    X = sparse.csr_matrix(expr.X)
    h.update(repr((X.shape, X.dtype.str, X.indptr.dtype.str, X.indices.dtype.str)).encode())
    for arr in (X.indptr, X.indices, X.data):
        h.update(np.ascontiguousarray(arr).data)
    if expr.library_size is not None:
        h.update(np.ascontiguousarray(expr.library_size, dtype=np.float64).data)
    return h.hexdigest()[:40]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _category_name(category: type[Warning]) -> str:
    return f"{category.__module__}:{category.__qualname__}"


def _warn(said: list[Any]) -> None:
    """Emit ``(category name, message)`` pairs as warnings (unknown categories: UserWarning)."""
    import importlib

    for name, message in said:
        module, _, qualname = str(name).partition(":")
        try:
            category = getattr(importlib.import_module(module), qualname)
        except (ImportError, AttributeError, ValueError):
            category = UserWarning
        warnings.warn(message, category, stacklevel=3)


def _meta_json(cells: Any, said: list[Any]) -> str:
    """``meta.json`` of a cache entry: the fields, their padding and dtypes, the gene match,
    the backbone's meta and what tokenizing warned (both writers share it)."""
    return json.dumps(
        {
            "format": FORMAT,
            "fields": list(cells.fields),
            "pad_values": {k: float(v) for k, v in cells.pad_values.items()},
            "dtypes": {k: _dtype_name(v) for k, v in cells.dtypes.items()},
            "gene_match": None if cells.gene_match is None else asdict(cells.gene_match),
            "meta": cells.meta,
            "warnings": [list(w) for w in said],
        }
    )


def _from_cache(folder: Path, log: Any) -> Any:
    """The cache entry in ``folder`` (its warnings said again, the hit logged), or ``None``."""
    cached = load(folder) if folder.is_dir() else None
    if cached is not None:
        _warn(getattr(cached, "said", []))  # what tokenizing said, said again
        if log is not None:
            log(f"tokens: {len(cached):,} cells read from the cache ({folder})")
    return cached


def save(folder: Path, cells: Any, said: list[Any] | None = None) -> bool:
    """Write ``cells`` atomically into ``folder`` with the warnings tokenizing gave (``said``);
    ``False`` when they cannot be cached."""
    try:
        text = _meta_json(cells, said or [])
    except (TypeError, ValueError):
        return False
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths = cells.lengths()
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    for i, (key, rows) in enumerate(cells.fields.items()):
        flat = np.concatenate(list(rows)) if len(rows) else np.zeros(0)
        np.save(tmp / f"field{i}.npy", flat)
        del key
    (tmp / "meta.json").write_text(text)
    try:
        tmp.rename(folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def load(folder: Path) -> Any:
    """The cached :class:`TokenizedCells` (memory-mapped), or ``None`` when absent/unreadable."""
    import torch

    from sctune.core.cells import GeneMatch, TokenizedCells

    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            return None
        offsets = np.load(folder / "offsets.npy")
        fields = {
            key: Ragged(np.load(folder / f"field{i}.npy", mmap_mode="r"), offsets)
            for i, key in enumerate(meta["fields"])
        }
    except (OSError, ValueError, KeyError):
        return None
    gm = meta["gene_match"]
    if gm is not None:
        gm = GeneMatch(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in gm.items()}  # type: ignore[arg-type]
        )
    cells = TokenizedCells(
        fields=fields,
        pad_values=meta["pad_values"],
        dtypes={k: getattr(torch, v) for k, v in meta["dtypes"].items()},
        gene_match=gm,
        meta=meta["meta"],
    )
    cells.said = [tuple(w) for w in meta.get("warnings", [])]  # type: ignore[attr-defined]
    return cells


def tokenize_cached(
    backbone: Any,
    expr: Any,
    config: Any,
    *,
    seed: int,
    enabled: bool = True,
    cache_dir: str | Path | None = None,
    log: Any = None,
) -> Any:
    """``backbone.tokenize(expr, config, seed=seed)``, read from / written to the cache."""
    if not enabled:
        return backbone.tokenize(expr, config, seed=seed)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / "tokens" / cache_key(backbone, config, expr, seed=seed)
    cached = _from_cache(folder, log)
    if cached is not None:
        return cached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells = backbone.tokenize(expr, config, seed=seed)
    said = [(_category_name(w.category), str(w.message)) for w in caught]
    _warn(said)
    try:
        save(folder, cells, said)
    except OSError:  # a read-only or full disk only costs the next run the work
        pass
    return cells


def _append(tmp: Path, cells: Any, first: Any, dtypes: list[Any], handles: list[Any]) -> Any:
    """Append one chunk's flat fields to ``field<i>.bin`` (opened with the first chunk)."""
    if first is None:
        first = cells
        handles = [open(tmp / f"field{i}.bin", "wb") for i in range(len(cells.fields))]
        dtypes = [None] * len(handles)
    for i, rows in enumerate(cells.fields.values()):
        flat = np.concatenate(list(rows)) if len(rows) else np.zeros(0)
        if dtypes[i] is None:
            dtypes[i] = flat.dtype
        handles[i].write(np.ascontiguousarray(flat, dtype=dtypes[i]).tobytes())
    return first, dtypes, handles


def stream_key(backbone: Any, config: Any, data: Any, *, seed: int) -> str:
    """The cache key of a streamed run's tokens: the file by path, size and modification time
    (hashing its content would read it once more), the matrix options, the cells, the kept
    genes, the chunk size (each chunk is tokenized with the run's seed), and the backbone."""
    st = data.path.stat()
    head = {
        "format": FORMAT,
        "stream": True,
        "file": [str(data.path.resolve()), st.st_size, st.st_mtime_ns],
        "data": {k: getattr(data.cfg, k) for k in ("source", "kind", "gene_column")},
        "chunk": data.chunk,
        "rows": hashlib.sha256(np.ascontiguousarray(data.rows, dtype=np.int64).data).hexdigest(),
        "keep": None
        if data.keep is None
        else hashlib.sha256("\n".join(data.keep).encode()).hexdigest(),
        "backbone": backbone.name,
        "options": _options(config),
        "plugin_source": _plugin_source(backbone),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()[:40]


COPY_BLOCK = 8 * 2**20  # values per block when the streamed fields become .npy files


def tokenize_stream(
    backbone: Any,
    data: Any,
    config: Any,
    *,
    seed: int,
    enabled: bool = True,
    cache_dir: str | Path | None = None,
    log: Any = None,
    progress: Any = None,
) -> Any:
    """Tokenize a :class:`~sctune.core.streaming.StreamedData` chunk by chunk into flat files
    on disk and return them memory-mapped, so memory holds one chunk, not the cells' tokens.

    Each chunk is tokenized with ``seed`` (as ``sctune predict`` tokenizes its chunks). The
    folder is the token cache entry (:func:`stream_key`); with ``enabled=False`` it is a
    temporary folder under the cache directory, removed when the tokens are garbage-collected.
    """
    import tempfile
    import weakref

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = stream_key(backbone, config, data, seed=seed)
    folder = root / "tokens" / key
    cached = _from_cache(folder, log) if enabled else None
    if cached is not None:
        return cached
    (root / "tokens").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.stream", dir=root / "tokens"))
    try:
        first: Any = None
        handles: list[Any] = []
        dtypes: list[Any] = []
        lengths: list[np.ndarray] = []
        said: list[tuple[str, str]] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for lo, hi, part in data.chunks():
                cells = backbone.tokenize(part.expression, config, seed=seed)
                first, dtypes, handles = _append(tmp, cells, first, dtypes, handles)
                lengths.append(cells.lengths())
                if progress is not None:
                    progress(hi - lo)
        for w in caught:  # reading and tokenizing warnings: each message once, not per chunk
            item = (_category_name(w.category), str(w.message))
            if item not in said:
                said.append(item)
        for h in handles:
            h.close()
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
        np.save(tmp / "offsets.npy", offsets)
        for i, dtype in enumerate(dtypes):
            raw = (
                np.memmap(tmp / f"field{i}.bin", dtype=dtype, mode="r")
                if offsets[-1]
                else np.zeros(0, dtype)
            )
            out = np.lib.format.open_memmap(
                tmp / f"field{i}.npy", mode="w+", dtype=dtype, shape=(int(offsets[-1]),)
            )
            for a in range(0, len(raw), COPY_BLOCK):
                out[a : a + COPY_BLOCK] = raw[a : a + COPY_BLOCK]
            out.flush()
            del out, raw
            (tmp / f"field{i}.bin").unlink()
        (tmp / "meta.json").write_text(_meta_json(first, said))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _warn(said)
    if log is not None:
        log(
            f"tokens: {len(offsets) - 1:,} cells tokenized chunk by chunk, memory-mapped from disk"
        )
    if enabled:
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
        target = folder
    else:
        target = tmp
    cells = load(target)
    if cells is None:
        raise OSError(f"the streamed tokens in '{target}' could not be read back")
    if not enabled:
        weakref.finalize(cells, shutil.rmtree, str(target), True)
    return cells
