"""What ``tasksim validate`` checks beyond the configuration's own fields: the model files the
configuration names, which only a cycle would otherwise open. A source's head must be a
safetensors linear head whose input width is the width of the features it is applied to (the
source's own model's output, else the shared encoder's), and a model encoder must load and run on
one row of the shape it will be given. Each problem is one ``ConfigError`` line naming the field
(``sources[2].head``) and what is expected.

Widths are found cheaply: a model's output width from a one-row dry run on a dummy input, the
input width from ``input_shape``, the exported program, the ``mlp`` architecture's first layer, or
one row of the production data when it can be read (else that check is left to the cycle).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from tasksim.config import Config, EncoderConfig, InputColumns, SourceConfig
from tasksim.errors import ConfigError, DataError, SourceError

__all__ = ["check_data_files", "check_model_files"]

log = logging.getLogger(__name__)

_MODEL_KINDS = ("torchscript", "safetensors")
_DUMMY = InputColumns(feature_columns=("x",))


def _production_width(config: Config) -> int | None:
    """Values per row of the production feature columns, from one row of the data; None when the
    data cannot be read now (it may not exist yet: the cycle reports that)."""
    from tasksim._encoding import table_to_tensor
    from tasksim.datafiles import _open_dataset

    columns = config.production.feature_columns
    if not columns:
        return None
    try:
        dataset, _ = _open_dataset(config.production.path, config.production.partitioning)
        head = dataset.head(1, columns=list(columns))
        if head.num_rows == 0:
            return None
        return int(table_to_tensor(head, columns).shape[1])
    except Exception as exc:  # noqa: BLE001 - unreadable now is the cycle's to report, not validate's
        log.debug("validate: production data not read for widths (%s)", exc)
        return None


def _input_width(encoder: object, config: Config) -> int | None:
    shape = getattr(encoder, "input_shape", None)
    if shape:
        return int(np.prod(shape))
    root = getattr(encoder, "hook_root", None)
    layers = getattr(root, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and layers and isinstance(layers[0], torch.nn.Linear):
        return int(layers[0].in_features)  # the built-in mlp
    return _production_width(config)


def _output_width(cfg: EncoderConfig, field: str, source: str | None, config: Config) -> int | None:
    """The encoder's features per row (None when it cannot be known without the data), or a
    ``ConfigError`` naming ``field`` when the model cannot be loaded or run."""
    from tasksim.embed import build_encoder

    if cfg.kind == "tabular":
        return None  # one-hot widths follow the data's categories
    if cfg.kind == "identity":
        return _production_width(config)
    label = f"{field} ({source})" if source else field
    try:
        encoder = build_encoder(cfg, device=torch.device("cpu"), source=source, field=field)
        if cfg.kind not in _MODEL_KINDS:
            return encoder.dim
        width = _input_width(encoder, config)
        if width is None:
            return None
        row = torch.randn(1, width, generator=torch.Generator().manual_seed(0)).numpy()
        table = pa.table({"x": pa.array(list(row), type=pa.list_(pa.float32(), width))})
        return int(encoder.encode(table, _DUMMY).shape[1])
    except SourceError as exc:
        raise ConfigError(f"{label}: {exc.reason}") from exc
    except DataError as exc:
        raise ConfigError(f"{label}: {exc}") from exc


def _check_head(config: Config, index: int, source: SourceConfig, widths: dict[str, int | None]) -> None:
    from tasksim.model_encoders import check_head_file

    assert source.head is not None
    field = f"sources[{index}].head ({source.name})"
    try:
        _, width = check_head_file(source.head)
    except DataError as exc:
        raise ConfigError(f"{field}: {exc}") from exc
    if source.encoder is not None:
        model = f"sources[{index}].encoder"
        expected = widths.get(model)
        what = f"the source's model ({model}, {source.encoder.kind})"
    else:
        model = "encoder"
        if model not in widths:
            widths[model] = _output_width(config.encoder, model, None, config)
        expected = widths[model]
        what = f"the shared encoder (encoder, {config.encoder.kind}; the source has no model of its own)"
    if expected is not None and width != expected:
        raise ConfigError(f"{field}: {source.head}: the head's 'weight' takes {width} features per row but "
                          f"{what} gives {expected}; expected a 'weight' of shape (classes, {expected})")


def check_model_files(config: Config) -> None:
    """Load and dry-run every model encoder (the shared one and each source's), then check every
    source head against the width of the features it will be applied to; the first problem
    raises ``ConfigError`` with one line."""
    widths: dict[str, int | None] = {}
    if config.encoder.kind in _MODEL_KINDS:
        widths["encoder"] = _output_width(config.encoder, "encoder", None, config)
    for i, source in enumerate(config.sources):
        enc = source.encoder
        if enc is not None and (enc.kind in _MODEL_KINDS or source.head is not None):
            widths[f"sources[{i}].encoder"] = _output_width(enc, f"sources[{i}].encoder", source.name, config)
        if source.head is not None:
            _check_head(config, i, source, widths)


def check_data_files(config: Config) -> tuple[list[str], list[str]]:
    """The data files' schemas (one footer each, no rows read): every source's files open as
    Parquet with its configured columns and types, and so do the production data's. Returns
    (problems, notes), one line each naming the field, file and column. Production data that does
    not exist yet is a note, not a problem: a daemon may be set up before its first window lands
    (its cycles record ``no_data`` until then)."""
    import glob
    from pathlib import Path

    from tasksim.sample import check_production_schema, check_source_schema

    problems: list[str] = []
    notes: list[str] = []
    for i, source in enumerate(config.sources):
        try:
            check_source_schema(source, config.encoder.kind)
        except SourceError as exc:
            problems.append(f"sources[{i}] ({source.name}): {exc.reason}")
    production = str(config.production.path)
    local = "://" not in production
    if local and not (Path(production).exists() or (glob.has_magic(production) and glob.glob(production))):
        notes.append(f"production.path: {production} does not exist yet (cycles record no_data until it does)")
        return problems, notes
    try:
        check_production_schema(config.production, config.encoder.kind)
    except DataError as exc:
        problems.append(f"production.path: {exc}")
    return problems, notes
