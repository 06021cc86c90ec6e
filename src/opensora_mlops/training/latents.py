"""Per-stage data for the trainer: a cached latent table, or online VAE/text encoding.

The embedded default encodes every kept clip of a stage's bucket table once (VAE latents + text
embeddings) into ``data/05_model_input/<stage>_latents/``: ``index.parquet`` (the bucket table rows,
one per cached clip, with ``num_windows``) and ``tensors.safetensors`` (``latent.<i>`` [K, C, T, H, W],
``frames.<i>`` [K, T] source frame numbers, ``text.<i>``, ``text_mask.<i>``).
Training then never touches the VAE or the text encoder, which keeps CPU training fast. The batch
plan is the bucketing pipeline's: :class:`VariableVideoBatchSampler` over the stored ``bucket_id``.

A clip is cached as K temporal *windows*: every non-overlapping window of the bucket's frame count
(at the stage's frame interval) that fits in it, up to ``max_windows``
(:meth:`~opensora_mlops.data.dataset.VideoBucketDataset.windows`). One fixed window per clip would
show the model the same 8 frames of a clip in every epoch; :class:`CachedBatches` instead takes, for
each clip, a different window each epoch, visiting all K of a clip in every K epochs in a random order
(:func:`window_of`) that depends on (seed, epoch, row) only, so a resumed run sees the same windows.
Validation and evaluation read window 0 (fixed, comparable between runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError
from opensora_mlops.data.buckets import BucketConfig
from opensora_mlops.data.sampler import SampleKey, VariableVideoBatchSampler

logger = logging.getLogger(__name__)

#: Layout of the cache files; part of the reuse key, so a cache of another layout is encoded again.
CACHE_FORMAT = 2
DEFAULT_MAX_WINDOWS = 8
INDEX_FILE = "index.parquet"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
REQUIRED_COLUMNS = ("path", "text", "fps", "bucket_id", "bucket_resolution", "bucket_num_frames",
                    "bucket_height", "bucket_width", "batch_size", "keep")


def check_bucket_table(table: pd.DataFrame, where: str = "bucket table") -> pd.DataFrame:
    """The kept rows of a bucket table, refused with a clear error when columns or rows are missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{where} lacks column(s) {missing}; is it the bucketing pipeline's output?")
    kept = table[table["keep"].fillna(False).astype(bool) & table["bucket_id"].notna()].reset_index(drop=True)
    if kept.empty:
        raise ConfigError(f"{where} has no kept rows ({len(table)} row(s), all dropped by bucketing)")
    return kept


def bucket_config_from_table(table: pd.DataFrame, batch_scale: float = 1.0) -> BucketConfig:
    """The stage's buckets as the bucketing pipeline wrote them, batch sizes scaled by ``batch_scale``.

    An unknown resolution in the table is a :class:`ConfigError` naming it (from the aspect tables).
    """
    if batch_scale <= 0:
        raise ConfigError(f"batch_scale must be > 0, got {batch_scale}")
    raw: dict[str, dict[int, list[Any]]] = {}
    for (res, frames), group in table.groupby(["bucket_resolution", "bucket_num_frames"], sort=False):
        sizes = group["batch_size"].dropna().unique()
        if len(sizes) != 1:
            raise ConfigError(f"bucket {res}/{frames} has inconsistent batch sizes {sorted(sizes)}")
        raw.setdefault(str(res), {})[int(frames)] = [1.0, max(1, round(int(sizes[0]) * batch_scale))]
    return BucketConfig(raw, where="bucket table")


def holdout_mask(paths: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Deterministic held-out selection by hashing the clip's file name: stable across stages and runs,
    and across machines (the same clips stay held out when the data root moves)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in [0, 1), got {fraction}")
    values = np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}:{Path(str(p)).name}".encode()).digest()[:8], "little") / 2**64 for p in paths]
    )
    held = values < fraction
    if fraction > 0 and len(values) > 1 and not held.any():
        held[np.argmin(values)] = True  # a small table still gets one held-out clip
    if held.all():
        held[np.argmax(values)] = False  # and always keeps one clip to train on
    return held


def window_of(seed: int, epoch: int, row: int, num_windows: int) -> int:
    """The window of cached clip ``row`` that epoch ``epoch`` trains on: a random order of the clip's
    ``num_windows`` windows, a new order every ``num_windows`` epochs, so every window is used once per
    ``num_windows`` epochs. Depends on its arguments only (resumable, the same on every rank)."""
    if num_windows <= 1:
        return 0
    cycle, position = divmod(int(epoch), int(num_windows))
    order = np.random.default_rng([int(seed), int(row), cycle, 0x57]).permutation(int(num_windows))
    return int(order[position])


class LatentCache:
    """Cached latents + text embeddings of one stage; ``get(rows, windows)`` stacks one bucket's batch."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        for name in (INDEX_FILE, TENSORS_FILE, META_FILE):
            if not (self.directory / name).exists():
                raise FileNotFoundError(f"latent cache {self.directory} is incomplete: {name} is missing")
        self.index = pd.read_parquet(self.directory / INDEX_FILE)
        self.meta = json.loads((self.directory / META_FILE).read_text())
        self.tensors = load_file(str(self.directory / TENSORS_FILE))
        if "num_windows" in self.index.columns:
            self.num_windows = self.index["num_windows"].to_numpy(dtype=np.int64)
        else:  # a cache written before windows: one [C, T, H, W] latent per clip
            self.num_windows = np.ones(len(self.index), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def latent(self, row: int, window: int = 0) -> torch.Tensor:
        """Latent [C, T, H, W] of one window of one cached clip."""
        latent = self.tensors[f"latent.{int(row)}"]
        if latent.dim() == 4:
            latent = latent[None]
        if not 0 <= window < latent.shape[0]:
            raise IndexError(f"cached clip {row} has {latent.shape[0]} window(s), asked for window {window}")
        return latent[window]

    def get(self, rows: list[int] | np.ndarray, windows: list[int] | np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The batch of ``rows``, each at its window in ``windows`` (default: window 0 of every row)."""
        rows = [int(r) for r in rows]
        windows = [0] * len(rows) if windows is None else [int(w) for w in windows]
        if len(windows) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(windows)} windows")
        sub = self.index.iloc[rows]
        return {
            "x": torch.stack([self.latent(r, w) for r, w in zip(rows, windows)]).float(),
            "y": torch.stack([self.tensors[f"text.{r}"] for r in rows]).float(),
            "mask": torch.stack([self.tensors[f"text_mask.{r}"] for r in rows]).long(),
            "fps": torch.tensor(sub["fps"].to_numpy(dtype=np.float32)),
            "height": torch.tensor(sub["bucket_height"].to_numpy(dtype=np.float32)),
            "width": torch.tensor(sub["bucket_width"].to_numpy(dtype=np.float32)),
            "ar": torch.tensor((sub["bucket_height"] / sub["bucket_width"]).to_numpy(dtype=np.float32)),
            "num_frames": torch.tensor(sub["bucket_num_frames"].to_numpy(dtype=np.float32)),
        }


def write_latent_cache(
    directory: str | Path,
    table: pd.DataFrame,
    load_video: Callable[[SampleKey], Any],
    encode_video: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
    meta: Mapping[str, Any],
    batch_size: int = 4,
) -> Path:
    """Encode every row of ``table`` (kept bucket rows) and write the cache atomically.

    ``load_video(key)`` returns the clip [3, T, H, W] in [-1, 1] at its bucket size, or the dataset's
    sample dict (``video``, the ``fps`` it fed the model: images get the dataset's image fps, ``text``
    and ``frame_indices``), or a list of either: the clip's windows. ``encode_video`` maps
    [B, 3, T, H, W] to latents (``batch_size`` windows at a time); ``encode_text`` maps captions to
    (emb, mask). A sample's own ``text`` is encoded (a replacement for a broken file brings its own).
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    table = table.reset_index(drop=True)
    fps = table["fps"].astype(float).to_numpy().copy() if "fps" in table.columns else np.full(len(table), np.nan)
    num_windows = np.zeros(len(table), dtype=np.int64)
    groups = table.groupby("bucket_id", sort=True).indices
    latents: dict[int, list[torch.Tensor]] = {}
    pending: list[tuple[int, torch.Tensor]] = []  # (row, window video) waiting for the encoder

    def encode_pending() -> None:
        with torch.no_grad():
            encoded = encode_video(torch.stack([video for _, video in pending]))
        for (r, _), latent in zip(pending, encoded, strict=True):
            latents.setdefault(r, []).append(latent.detach().float().contiguous().cpu())
        pending.clear()

    with tqdm(total=len(table), desc=f"caching latents -> {directory.name}", unit="clip") as bar:
        for _, rows in groups.items():
            for start in range(0, len(rows), batch_size):
                chunk = [int(r) for r in rows[start : start + batch_size]]
                texts = []
                for r in chunk:
                    row = table.iloc[r]
                    key = SampleKey(r, int(row["bucket_num_frames"]), int(row["bucket_height"]),
                                    int(row["bucket_width"]), str(row["bucket_id"]))
                    loaded = load_video(key)
                    windows = list(loaded) if isinstance(loaded, list | tuple) else [loaded]
                    if not windows:
                        raise ValueError(f"load_video returned no windows for row {r} ({row.get('path')})")
                    text = str(row["text"])
                    frame_indices = []
                    for sample in windows:
                        if isinstance(sample, Mapping):
                            fps[r] = float(sample["fps"])  # the micro-condition the dataset decided on
                            text = str(sample.get("text", text))
                            if "frame_indices" in sample:
                                frame_indices.append(torch.as_tensor(sample["frame_indices"], dtype=torch.long))
                            sample = sample["video"]
                        pending.append((r, sample))
                        if len(pending) >= batch_size:
                            encode_pending()
                    if len(frame_indices) == len(windows):
                        tensors[f"frames.{r}"] = torch.stack(frame_indices).contiguous()
                    num_windows[r] = len(windows)
                    texts.append(text)
                with torch.no_grad():
                    emb, mask = encode_text(texts)
                for j, r in enumerate(chunk):
                    tensors[f"text.{r}"] = emb[j].detach().float().contiguous().cpu()
                    tensors[f"text_mask.{r}"] = mask[j].detach().long().contiguous().cpu()
                bar.update(len(chunk))
            if pending:  # a bucket's last windows (the next bucket's have another shape)
                encode_pending()
    for r, stack in latents.items():
        tensors[f"latent.{r}"] = torch.stack(stack).contiguous()
    save_file(tensors, str(tmp / TENSORS_FILE))
    index = table.copy()
    if np.isnan(fps).any():
        bad = index.loc[np.isnan(fps), "path"].tolist()[:3]
        raise ValueError(f"no fps for {int(np.isnan(fps).sum())} cached sample(s), e.g. {bad}")
    index["fps"] = fps
    index["num_windows"] = num_windows
    for col in index.columns:  # Parquet wants plain column types for object columns
        if index[col].dtype == object:
            index[col] = index[col].astype(str)
    index.to_parquet(tmp / INDEX_FILE, index=False)
    meta = {**dict(meta), "format": CACHE_FORMAT, "num_windows": int(num_windows.sum())}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


class CachedBatches:
    """Endless batches from a :class:`LatentCache` in the sampler's bucket order, resumable; each clip
    at the window :func:`window_of` picks for the epoch."""

    def __init__(self, cache: LatentCache, sampler: VariableVideoBatchSampler) -> None:
        self.cache = cache
        self.sampler = sampler
        self._steps_this_epoch = 0

    def windows(self, rows: list[int], epoch: int) -> list[int]:
        return [window_of(self.sampler.seed, epoch, r, int(self.cache.num_windows[r])) for r in rows]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            for keys in self.sampler:
                self._steps_this_epoch += 1
                rows = [k.row for k in keys]
                yield self.cache.get(rows, self.windows(rows, self.sampler.epoch))
            self.sampler.set_epoch(self.sampler.epoch + 1)
            self._steps_this_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(dict(state))


def build_stage_caches(
    bucket_table: pd.DataFrame,
    out_dir: str | Path,
    vae: Any,
    text_encoder: Any,
    *,
    frame_interval: int = 1,
    video_root: str | Path | None = None,
    holdout_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int = 4,
    meta: Mapping[str, Any] | None = None,
    reuse_key: Mapping[str, Any] | None = None,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
) -> dict[str, Any]:
    """Encode a stage's kept clips into ``<out_dir>/train`` and, with a hold-out, ``<out_dir>/val``,
    each clip as every non-overlapping window of its bucket (at most ``max_windows``; None: all).

    Returns a manifest dict (directories, counts, a content hash of the input table) that the
    pipeline stores as its catalog output. With ``reuse_key`` (what identifies the encoders, e.g. their
    configs and weight hashes) an existing cache built from the same table, settings and encoders is
    reused instead of encoded again, so rerunning a finished stage costs seconds.
    """
    from opensora_mlops.data.dataset import VideoBucketDataset

    kept = check_bucket_table(bucket_table)
    out_dir = Path(out_dir)
    held = holdout_mask(kept["path"], holdout_fraction, seed)
    content_hash = hashlib.sha256(
        pd.util.hash_pandas_object(kept[["path", "text", "bucket_id"]].astype(str), index=False).values.tobytes()
    ).hexdigest()[:16]
    manifest: dict[str, Any] = {"table_hash": content_hash, "latent_channels": int(vae.latent_channels),
                                "text_dim": int(text_encoder.output_dim),
                                "text_length": int(text_encoder.model_max_length)}
    cache_key = None
    if reuse_key is not None:
        identity = {"table": pd.util.hash_pandas_object(kept.astype(str), index=False).values.tobytes().hex(),
                    "frame_interval": frame_interval, "holdout_fraction": holdout_fraction, "seed": seed,
                    "video_root": str(video_root), "encoders": dict(reuse_key), "format": CACHE_FORMAT,
                    "max_windows": max_windows}
        cache_key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        stored = out_dir / "manifest.json"
        if stored.exists():
            previous = json.loads(stored.read_text())
            dirs_ok = all(Path(previous[k]).exists() for k in ("train_dir", "val_dir") if k in previous)
            if previous.get("cache_key") == cache_key and dirs_ok:
                logger.info("latent cache %s is up to date (key %s); not encoding again", out_dir, cache_key)
                return previous
    for split, rows in (("train", kept[~held]), ("val", kept[held])):
        if rows.empty:
            if split == "train":
                raise ConfigError(f"holdout_fraction {holdout_fraction} leaves no training clip out of {len(kept)}")
            continue
        rows = rows.reset_index(drop=True)
        dataset = VideoBucketDataset(rows, frame_interval=frame_interval, root=video_root, seed=seed)
        written = write_latent_cache(
            out_dir / split, rows, lambda key, ds=dataset: ds.windows(key, max_windows), vae.encode,
            text_encoder.encode, {**dict(meta or {}), **manifest, "split": split, "num_samples": len(rows),
                                  "max_windows": max_windows}, batch_size=batch_size,
        )  # fmt: skip
        manifest[f"{split}_dir"] = str(out_dir / split)
        manifest[f"num_{split}"] = len(rows)
        manifest[f"num_{split}_windows"] = json.loads((written / META_FILE).read_text())["num_windows"]
    if cache_key is not None:
        manifest["cache_key"] = cache_key
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
