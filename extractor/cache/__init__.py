"""The HDF5 feature cache, apart from whatever makes the features (issue 17, item 3).

One module per concern, so the format is found in one place and each stage of a cache's life in
another:

    layout.py   the file format: dataset names, attributes, dimension scales, chunking and
                compression, string and file-stat encodings, the spec <-> attributes mapping
    reader.py   `open_cache` / `FeatureCache`, and the checks that a cache's source files
                (row files, shards) are all readable
    writer.py   `write_cache` (a whole cache from memory), `write_rows`, copying rows
    staging.py  a run in progress: `Checkpoint`s in `<cache>.parts/` (`Staging`)
    rows.py     a cache that grows: row files + an index of virtual datasets (`consolidate`
                folds a run's checkpoints in; `compact` rewrites it as one file)
    shards.py   shards written by the Ray engine's workers, folded into a cache (`merge`)

Nothing here imports an engine (`extractor.runner`, `extractor.ray_engine`,
`extractor.planner`), the conv base (`extractor.backbone`), a runtime or a command line:
tests/test_layers.py checks it. The engines decide *what* to extract; this package only stores
and reads it. `extractor.atomic` (crash-safe file writes) and `extractor.walk` (file stats)
stay outside the package: the engines and the int8 model store use them too.
"""

from extractor.cache.layout import (
    FORMAT,
    PART_FORMAT,
    CacheError,
    as_features,
    dataset_name,
    feature_datasets,
    label_dims,
    write_spec,
)
from extractor.cache.reader import (
    FeatureCache,
    lost_sources_message,
    missing_sources,
    open_cache,
    virtual_source_files,
)
from extractor.cache.rows import CompactSummary, compact, consolidate, disk_bytes, rows_dir
from extractor.cache.shards import ShardError, shards_dir
from extractor.cache.staging import Checkpoint, Staged, Staging, parts_dir
from extractor.cache.writer import write_cache, write_rows

__all__ = [
    "FORMAT",
    "PART_FORMAT",
    "CacheError",
    "Checkpoint",
    "CompactSummary",
    "FeatureCache",
    "ShardError",
    "Staged",
    "Staging",
    "as_features",
    "compact",
    "consolidate",
    "dataset_name",
    "disk_bytes",
    "feature_datasets",
    "label_dims",
    "lost_sources_message",
    "missing_sources",
    "open_cache",
    "parts_dir",
    "rows_dir",
    "shards_dir",
    "virtual_source_files",
    "write_cache",
    "write_rows",
    "write_spec",
]
