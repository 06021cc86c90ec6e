"""Per-stage data for the trainer: a cached latent table, or online VAE/text encoding.

The embedded default encodes every kept clip of a stage's bucket table once (VAE latents + text
embeddings) into ``data/05_model_input/<stage>_latents/``: ``index.parquet`` (the bucket table rows,
one per cached clip, with ``num_windows`` and ``num_latent_frames``) and ``tensors.safetensors``
(``latent.<i>`` [C, L, h, w], ``starts.<i>`` [K] the latent frame where each of the clip's K training
windows starts, ``frames.<i>`` [L] their source frame numbers, ``text.<i>``, ``text_mask.<i>``).
Training then never touches the VAE or the text encoder, which keeps CPU training fast. The batch
plan is the bucketing pipeline's: :class:`VariableVideoBatchSampler` over the stored ``bucket_id``.

A clip is cached whole, not as one fixed window of the bucket's T frames: one fixed window would show
the model the same T frames of a clip in every epoch. ``windows="slice"`` (the default) encodes every
``frame_interval``-th frame of the clip (up to ``max_latent_frames``) once, and any T consecutive
latent frames are a window: a 2.5 s clip at 26 fps and interval 2 gives 33 latent frames, so 26
8-frame windows, for the VAE cost of 4 separate ones. That is exact for a VAE that encodes frame by
frame, as every VAE of this platform does (SD's and the fitted AutoencoderTiny, through
:class:`~opensora_mlops.models.vae.VideoAutoencoder`); ``windows="tile"`` is for one that mixes frames
(it encodes every non-overlapping window separately and concatenates them).

:class:`CachedBatches` takes, for each clip, a different window each epoch, visiting all K of a clip
in every K epochs in a random order (:func:`window_of`) that depends on (seed, epoch, row) only, so a
resumed run sees the same windows. Validation and evaluation read window 0 (fixed, comparable
between runs).
"""

from __future__ import annotations

import functools
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
CACHE_FORMAT = 3
#: Latent frames cached per clip at most (a 4 s clip at 30 fps and interval 2 has 60).
DEFAULT_MAX_LATENT_FRAMES = 64
WINDOW_MODES = ("slice", "tile")
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


def training_conditions(index: pd.DataFrame) -> dict[str, float | int]:
    """The micro-conditions a cache's rows train on: median fps and the most common video bucket
    (height, width, frames); images count only when the cache holds no video."""
    videos = index[index["bucket_num_frames"] > 1] if (index["bucket_num_frames"] > 1).any() else index
    height, width, frames = videos.groupby(["bucket_height", "bucket_width", "bucket_num_frames"]).size().idxmax()
    return {"fps": float(videos["fps"].median()), "height": int(height), "width": int(width),
            "num_frames": int(frames)}


class LatentCache:
    """Cached latents + text embeddings of one stage; ``get(rows, windows)`` stacks one bucket's batch.

    ``image_views`` > 0 adds, for every cached video clip, that many rows to the 1-frame (image) bucket
    of its resolution and aspect ratio: each reads one latent frame of the clip (any of them: each frame
    is a window), with the clip's caption and the micro-conditions training gives images
    (``num_frames`` 1, fps :data:`~opensora_mlops.data.dataset.IMAGE_FPS`). This is Open-Sora's joint
    image + video training, fed from the videos' own frames, and costs no encoding: the rows share the
    clip's tensors. Every 1-frame row (stills included) then batches ``image_batch_size`` at a time.
    Why: a 1-frame sample costs about an eighth of an 8-frame one, so the model sees many more single
    subjects per CPU-second, and the spatial layers learn one object before the temporal ones learn its
    motion (BENCHMARKS.md, "Schedule, learning rate, batch, image views and position scale").
    """

    def __init__(self, directory: str | Path, image_views: int = 0, image_batch_size: int | None = None) -> None:
        self.directory = Path(directory)
        for name in (INDEX_FILE, TENSORS_FILE, META_FILE):
            if not (self.directory / name).exists():
                raise FileNotFoundError(f"latent cache {self.directory} is incomplete: {name} is missing")
        self.index = pd.read_parquet(self.directory / INDEX_FILE)
        self.meta = json.loads((self.directory / META_FILE).read_text())
        self.tensors = load_file(str(self.directory / TENSORS_FILE))
        self._source = np.arange(len(self.index), dtype=np.int64)  # the cached clip each row reads
        if image_views:
            self._add_image_views(int(image_views), image_batch_size)
        self._frames = self.index["bucket_num_frames"].to_numpy(dtype=np.int64)
        self._starts = [self._window_starts(r) for r in range(len(self.index))]
        self.num_windows = np.array([len(s) for s in self._starts], dtype=np.int64)

    def _add_image_views(self, views: int, batch_size: int | None) -> None:
        from opensora_mlops.data.dataset import IMAGE_FPS

        if views < 0 or batch_size is None or isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ConfigError(f"image views need image_views >= 0 and an image_batch_size >= 1, got {views} and "
                              f"{batch_size!r}")
        videos = np.flatnonzero(self.index["bucket_num_frames"].to_numpy() > 1)
        if not videos.size:
            return
        extra = self.index.iloc[np.tile(videos, views)].copy()
        extra["bucket_num_frames"] = 1
        extra["bucket_id"] = [f"{res}/1/{key}" for res, key in zip(extra["bucket_resolution"], extra["ar_key"])]
        extra["fps"] = IMAGE_FPS
        extra["num_windows"] = extra["num_latent_frames"]
        extra["image_view"] = True
        index = self.index.assign(image_view=False)
        index.loc[index["bucket_num_frames"] == 1, "batch_size"] = int(batch_size)
        extra["batch_size"] = int(batch_size)
        self.index = pd.concat([index, extra], ignore_index=True)
        self._source = np.concatenate([self._source, np.tile(videos, views)])

    def _window_starts(self, row: int) -> np.ndarray:
        source = int(self._source[row])
        if source != row:  # an image view: every latent frame of its clip is a window
            return np.arange(self.tensors[f"latent.{source}"].shape[1], dtype=np.int64)
        if f"starts.{row}" in self.tensors:
            return self.tensors[f"starts.{row}"].numpy()
        latent = self.tensors[f"latent.{row}"]
        if latent.dim() == 5:  # format 2: [K, C, T, h, w] tiles
            return np.arange(latent.shape[0], dtype=np.int64) * latent.shape[2]
        return np.zeros(1, dtype=np.int64)  # format 1: one [C, T, h, w] window per clip

    def __len__(self) -> int:
        return len(self.index)

    def latent(self, row: int, window: int = 0) -> torch.Tensor:
        """Latent [C, T, h, w] of one training window of one cached clip."""
        row = int(row)
        starts = self._starts[row]
        if not 0 <= window < len(starts):
            raise IndexError(f"cached clip {row} has {len(starts)} window(s), asked for window {window}")
        latent = self.tensors[f"latent.{int(self._source[row])}"]
        if latent.dim() == 5:
            latent = latent.permute(1, 0, 2, 3, 4).flatten(1, 2)  # tiles back to back in time
        start = int(starts[window])
        return latent[:, start : start + int(self._frames[row])]

    def get(self, rows: list[int] | np.ndarray, windows: list[int] | np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The batch of ``rows``, each at its window in ``windows`` (default: window 0 of every row)."""
        rows = [int(r) for r in rows]
        windows = [0] * len(rows) if windows is None else [int(w) for w in windows]
        if len(windows) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(windows)} windows")
        sub = self.index.iloc[rows]
        return {
            "x": torch.stack([self.latent(r, w) for r, w in zip(rows, windows)]).float(),
            "y": torch.stack([self.tensors[f"text.{self._source[r]}"] for r in rows]).float(),
            "mask": torch.stack([self.tensors[f"text_mask.{self._source[r]}"] for r in rows]).long(),
            "fps": torch.tensor(sub["fps"].to_numpy(dtype=np.float32)),
            "height": torch.tensor(sub["bucket_height"].to_numpy(dtype=np.float32)),
            "width": torch.tensor(sub["bucket_width"].to_numpy(dtype=np.float32)),
            "ar": torch.tensor((sub["bucket_height"] / sub["bucket_width"]).to_numpy(dtype=np.float32)),
            "num_frames": torch.tensor(sub["bucket_num_frames"].to_numpy(dtype=np.float32)),
        }


def _encode_clip(key: SampleKey, loaded: Any, encode_video: Callable[[torch.Tensor], torch.Tensor],
                 text: str) -> dict[str, Any]:
    """What :func:`write_latent_cache` keeps of one row: latent [C, L, h, w], ``tiles`` (whether the
    windows are its back-to-back T-frame tiles), source ``frames``, ``fps`` and ``text`` (None: unknown)."""
    t = key.num_frames
    tiles = isinstance(loaded, list | tuple)
    samples = list(loaded) if tiles else [loaded]
    if not samples:
        raise ValueError(f"load_video returned no video for row {key.row}")
    fps, videos, frame_indices, source_row = None, [], [], key.row
    for sample in samples:
        if isinstance(sample, Mapping):
            fps = float(sample["fps"])
            source_row = int(sample.get("row", source_row))
            text = str(sample.get("text", text))
            if "frame_indices" in sample:
                frame_indices.append(torch.as_tensor(sample["frame_indices"], dtype=torch.long))
            sample = sample["video"]
        videos.append(sample)
    lengths = {int(v.shape[1]) for v in videos}
    if (tiles and lengths != {t}) or min(lengths) < t:
        raise ValueError(f"row {key.row}: load_video gave {sorted(lengths)} frame(s) for a {t}-frame bucket "
                         f"({'every tile must have exactly' if tiles else 'a clip needs at least'} {t})")
    with torch.no_grad():
        encoded = encode_video(torch.stack(videos) if tiles else videos[0][None])
    if encoded.shape[2] != (t if tiles else videos[0].shape[1]):
        raise ValueError(f"the VAE turned {videos[0].shape[1]} frames into {encoded.shape[2]} latent "
                         "frames: cache windows='tile' for a VAE that does not encode frame by frame")
    latent = encoded.permute(1, 0, 2, 3, 4).flatten(1, 2) if tiles else encoded[0]
    return {"latent": latent.detach().float().contiguous().cpu(), "tiles": tiles,
            "frames": torch.cat(frame_indices).contiguous() if len(frame_indices) == len(videos) else None,
            "fps": fps, "text": text, "row": source_row}


class ClipLatentStore:
    """Encoded clips by content address, shared by the stages: the embedded stages train on the same
    clips at the same bucket sizes and frame interval, and a whole strided clip does not depend on the
    stage's frame count, so stage 2 and 3 reuse what stage 1 encoded. One safetensors file per clip
    (``<address>.safetensors``: latent, frames; fps, text and tiling in its metadata), written atomically.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, address: str) -> Path:
        return self.directory / f"{address}.safetensors"

    def has(self, address: str) -> bool:
        return self._path(address).is_file()

    def get(self, address: str) -> dict[str, Any] | None:
        path = self._path(address)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            info = handle.metadata() or {}
            clip: dict[str, Any] = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        clip.setdefault("frames", None)
        clip["tiles"] = info.get("tiles") == "1"
        clip["fps"] = float(info["fps"]) if info.get("fps") else None
        clip["text"] = info.get("text") or None
        return clip

    def put(self, address: str, clip: Mapping[str, Any]) -> None:
        tensors = {"latent": clip["latent"]}
        if clip.get("frames") is not None:
            tensors["frames"] = clip["frames"]
        info = {"tiles": "1" if clip["tiles"] else "0", "fps": "" if clip.get("fps") is None else repr(clip["fps"]),
                "text": clip.get("text") or ""}
        tmp = self._path(address).with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=info)
        tmp.replace(self._path(address))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_key(table: pd.DataFrame, row: int) -> SampleKey:
    """The sample key of ``row`` of a (reset-index) bucket table at its bucket's size."""
    values = table.iloc[row]
    return SampleKey(row, int(values["bucket_num_frames"]), int(values["bucket_height"]), int(values["bucket_width"]),
                     str(values["bucket_id"]))


def write_latent_cache(
    directory: str | Path,
    table: pd.DataFrame,
    load_video: Callable[[SampleKey], Any],
    encode_video: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
    meta: Mapping[str, Any],
    batch_size: int = 4,
    store: ClipLatentStore | None = None,
    store_key: Callable[[SampleKey], str | None] | None = None,
) -> Path:
    """Encode every row of ``table`` (kept bucket rows) and write the cache atomically.

    ``load_video(key)`` returns the clip [3, L, H, W] in [-1, 1] at its bucket size with L >= the
    bucket's T frames (every T consecutive frames are a training window), or the dataset's sample dict
    (``video``, the ``fps`` it fed the model: images get the dataset's image fps, ``text`` and
    ``frame_indices``), or a list of T-frame ones: tiles, each encoded on its own and each one window.
    ``encode_video`` maps [B, 3, T, H, W] to latents with the same number of frames; ``encode_text``
    maps captions to (emb, mask), ``batch_size`` at a time. A sample's own ``text`` is encoded (a
    replacement for a broken file brings its own). With a ``store``, a row whose ``store_key`` (None:
    not storable) is already there is not loaded or encoded again, and new ones are added.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    table = table.reset_index(drop=True)
    fps = table["fps"].astype(float).to_numpy().copy() if "fps" in table.columns else np.full(len(table), np.nan)
    num_windows = np.zeros(len(table), dtype=np.int64)
    num_latent_frames = np.zeros(len(table), dtype=np.int64)
    groups = table.groupby("bucket_id", sort=True).indices
    reused = 0
    with tqdm(total=len(table), desc=f"caching latents -> {directory.name}", unit="clip") as bar:
        for _, rows in groups.items():
            for start in range(0, len(rows), batch_size):
                chunk = [int(r) for r in rows[start : start + batch_size]]
                texts = []
                for r in chunk:
                    row = table.iloc[r]
                    key = row_key(table, r)
                    t = key.num_frames
                    address = store_key(key) if store is not None and store_key is not None else None
                    clip = store.get(address) if address is not None else None
                    if clip is None:
                        clip = _encode_clip(key, load_video(key), encode_video, str(row["text"]))
                        if address is not None and clip["row"] == r:  # not a broken file's stand-in
                            store.put(address, clip)
                    else:
                        reused += 1
                    latent = clip["latent"]
                    tensors[f"latent.{r}"] = latent
                    length = latent.shape[1]
                    starts = np.arange(0, length, t) if clip["tiles"] else np.arange(0, length - t + 1)
                    tensors[f"starts.{r}"] = torch.from_numpy(starts.astype(np.int64))
                    if clip.get("frames") is not None:
                        tensors[f"frames.{r}"] = clip["frames"]
                    if clip.get("fps") is not None:
                        fps[r] = float(clip["fps"])  # the micro-condition the dataset decided on
                    num_windows[r], num_latent_frames[r] = len(starts), length
                    texts.append(clip.get("text") or str(row["text"]))
                with torch.no_grad():
                    emb, mask = encode_text(texts)
                for j, r in enumerate(chunk):
                    tensors[f"text.{r}"] = emb[j].detach().float().contiguous().cpu()
                    tensors[f"text_mask.{r}"] = mask[j].detach().long().contiguous().cpu()
                bar.update(len(chunk))
    save_file(tensors, str(tmp / TENSORS_FILE))
    index = table.copy()
    if np.isnan(fps).any():
        bad = index.loc[np.isnan(fps), "path"].tolist()[:3]
        raise ValueError(f"no fps for {int(np.isnan(fps).sum())} cached sample(s), e.g. {bad}")
    index["fps"] = fps
    index["num_windows"] = num_windows
    index["num_latent_frames"] = num_latent_frames
    for col in index.columns:  # Parquet wants plain column types for object columns
        if index[col].dtype == object:
            index[col] = index[col].astype(str)
    index.to_parquet(tmp / INDEX_FILE, index=False)
    meta = {**dict(meta), "format": CACHE_FORMAT, "num_windows": int(num_windows.sum()),
            "num_latent_frames": int(num_latent_frames.sum()), "reused_from_store": reused}
    if store is not None:
        logger.info("%s: %d of %d clip(s) reused from %s", directory, reused, len(table), store.directory)
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
    windows: str = "slice",
    max_latent_frames: int | None = DEFAULT_MAX_LATENT_FRAMES,
    clip_store: str | Path | bool = True,
    encode_missing: Callable[[Mapping[str, tuple[pd.DataFrame, Callable, Callable]], Any, ClipLatentStore], None]
    | None = None,
) -> dict[str, Any]:
    """Encode a stage's kept clips into ``<out_dir>/train`` and, with a hold-out, ``<out_dir>/val``,
    each clip whole (``windows``, ``max_latent_frames``: module docstring).

    ``clip_store``: a :class:`ClipLatentStore` folder (True: ``<out_dir>/../latent_clips``, shared by
    the stages; False: none). It needs ``reuse_key`` (the encoders' identity is part of a clip's
    address, with the file's SHA-256, the bucket size, the frame interval and the window settings).

    ``encode_missing(splits, vae, store)``: called before the cache is assembled, with each split's
    (rows, load, address) — it fills the store with the clips it lacks elsewhere, e.g. Ray actors on a
    cluster (:func:`opensora_mlops.training.ray_latents.store_filler`), so this process only assembles
    the cache. It needs the clip store, on storage the workers share.

    Returns a manifest dict (directories, counts, a content hash of the input table) that the
    pipeline stores as its catalog output. With ``reuse_key`` (what identifies the encoders, e.g. their
    configs and weight hashes) an existing cache built from the same table, settings and encoders is
    reused instead of encoded again, so rerunning a finished stage costs seconds.
    """
    from opensora_mlops.data.dataset import VideoBucketDataset

    kept = check_bucket_table(bucket_table)
    if windows not in WINDOW_MODES:
        raise ConfigError(f"latent cache windows must be one of {list(WINDOW_MODES)}, got {windows!r}")
    if max_latent_frames is not None and max_latent_frames < int(kept["bucket_num_frames"].max()):
        raise ConfigError(f"max_latent_frames {max_latent_frames} is below the longest bucket "
                          f"({int(kept['bucket_num_frames'].max())} frames)")
    out_dir = Path(out_dir)
    store = None
    if clip_store and reuse_key is not None:
        store = ClipLatentStore(out_dir.parent / "latent_clips" if clip_store is True else clip_store)
    if encode_missing is not None and store is None:
        raise ConfigError("encoding the latent cache elsewhere (cache.executor ray) writes the clips into the clip "
                          "store: it needs clip_store and the encoders' reuse_key")
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
                    "windows": windows, "max_latent_frames": max_latent_frames}
        cache_key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        stored = out_dir / "manifest.json"
        if stored.exists():
            previous = json.loads(stored.read_text())
            dirs_ok = all(Path(previous[k]).exists() for k in ("train_dir", "val_dir") if k in previous)
            if previous.get("cache_key") == cache_key and dirs_ok:
                logger.info("latent cache %s is up to date (key %s); not encoding again", out_dir, cache_key)
                return previous
    splits: dict[str, tuple[pd.DataFrame, Callable, Callable]] = {}
    for split, rows in (("train", kept[~held]), ("val", kept[held])):
        if rows.empty:
            if split == "train":
                raise ConfigError(f"holdout_fraction {holdout_fraction} leaves no training clip out of {len(kept)}")
            continue
        rows = rows.reset_index(drop=True)
        dataset = VideoBucketDataset(rows, frame_interval=frame_interval, root=video_root, seed=seed)

        def address(key: SampleKey, ds=dataset) -> str | None:
            path = ds.path_of(key.row)
            if not path.is_file():
                return None
            identity = {"file": _file_digest(path), "size": [key.height, key.width], "interval": frame_interval,
                        "windows": windows, "max_latent_frames": max_latent_frames, "format": CACHE_FORMAT,
                        "encoders": dict(reuse_key or {}),
                        # tiles are the bucket's length; a strided clip serves any length
                        "frames": key.num_frames if windows == "tile" else None}
            return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]

        if windows == "slice":
            def load(key, ds=dataset):
                return ds.strided(key, max_latent_frames)
        else:
            def load(key, ds=dataset):
                return ds.windows(key, None if max_latent_frames is None else max_latent_frames // key.num_frames)
        # memoised: an encode_missing pass and the cache assembly both ask for every row's address,
        # which hashes the whole clip file
        splits[split] = (rows, load, functools.cache(address))
    if encode_missing is not None:  # e.g. one Ray actor pool for both splits; the cache then reads the store
        encode_missing(splits, vae, store)
    for split, (rows, load, address) in splits.items():
        written = write_latent_cache(
            out_dir / split, rows, load, vae.encode, text_encoder.encode,
            {**dict(meta or {}), **manifest, "split": split, "num_samples": len(rows), "windows": windows,
             "max_latent_frames": max_latent_frames}, batch_size=batch_size,
            store=store, store_key=address,
        )  # fmt: skip
        manifest[f"{split}_dir"] = str(out_dir / split)
        manifest[f"num_{split}"] = len(rows)
        written_meta = json.loads((written / META_FILE).read_text())
        manifest[f"num_{split}_windows"] = written_meta["num_windows"]
        manifest[f"num_{split}_reused"] = written_meta["reused_from_store"]
    if cache_key is not None:
        manifest["cache_key"] = cache_key
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest

