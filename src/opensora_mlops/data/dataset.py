"""Training dataset over a bucket table: decodes only the frames a sample needs.

The index of an item is a :class:`~opensora_mlops.data.sampler.SampleKey` (row + bucket T, H, W) as
:class:`~opensora_mlops.data.sampler.VariableVideoBatchSampler` yields it. For a video, a window of
``T · frame_interval`` frames is placed at random in the clip and T evenly spaced frames are taken from
it (1.1's temporal random crop). Only those frames are decoded: PyAV seeks to the keyframe at or
before the first needed frame and decodes forward until the last needed one, converting just the
needed frames, already scaled by swscale so that they cover the bucket size; the centre crop
follows. Images are one frame (T = 1).

For the latent cache two more loaders return a whole clip rather than one random window, so that
training on cached latents still sees different windows of a clip: :meth:`VideoBucketDataset.strided`
gives every ``frame_interval``-th frame of the clip (a frame-wise VAE's latents of it can be sliced into
any window of T frames), :meth:`VideoBucketDataset.windows` every non-overlapping window of
``T · frame_interval`` frames (at a random common offset), one sample each. Both decode in one pass.

Randomness comes from a per-worker generator: :func:`worker_init_fn` seeds numpy, ``random``, torch
and the dataset's generator from (base seed, epoch, rank, worker id), so two workers never draw the
same crops (1.1 left numpy unseeded per worker; fix #5).

A file that fails to decode is logged and replaced by another sample of the same bucket; after
``max_retries`` failures in a row the item raises.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import torch
from PIL import Image

from opensora_mlops.data.sampler import SampleKey

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# 1.1 fed images to the fps micro-condition as 120 fps; the released weights learned that value
IMAGE_FPS = 120.0


class DecodeError(RuntimeError):
    """A clip could not deliver the frames a sample needs."""


# --------------------------------------------------------------------------------------------------
# frame selection and decoding
# --------------------------------------------------------------------------------------------------
def window_indices(begin: int, total_frames: int, num_frames: int, frame_interval: int) -> np.ndarray:
    """Indices of ``num_frames`` evenly spaced frames in the window of ``num_frames·frame_interval``
    frames that starts at ``begin`` (cut at the clip's end)."""
    if total_frames < 1 or num_frames < 1:
        raise ValueError(f"need positive frame counts, got total {total_frames}, wanted {num_frames}")
    end = min(begin + num_frames * frame_interval, total_frames)
    if end - begin < num_frames:
        raise DecodeError(f"clip has {total_frames} frames, fewer than the {num_frames} a sample needs")
    return np.linspace(begin, end - 1, num_frames).astype(np.int64)


def temporal_crop_indices(
    total_frames: int, num_frames: int, frame_interval: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``num_frames`` evenly spaced frames in a random window of ``num_frames·frame_interval``."""
    if total_frames < 1 or num_frames < 1:
        raise ValueError(f"need positive frame counts, got total {total_frames}, wanted {num_frames}")
    span = num_frames * frame_interval
    begin = int(rng.integers(0, max(0, total_frames - span - 1) + 1))
    return window_indices(begin, total_frames, num_frames, frame_interval)


def strided_indices(total_frames: int, frame_interval: int, max_frames: int | None = None) -> np.ndarray:
    """Every ``frame_interval``-th frame from the first: 0, fi, 2·fi, … (at most ``max_frames``)."""
    if total_frames < 1 or frame_interval < 1:
        raise ValueError(f"need a positive frame count and interval, got {total_frames} and {frame_interval}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    return np.arange(0, total_frames, frame_interval, dtype=np.int64)[:max_frames]


def tiled_window_indices(
    total_frames: int, num_frames: int, frame_interval: int, rng: np.random.Generator,
    max_windows: int | None = None,
) -> np.ndarray:
    """Every non-overlapping window of ``num_frames·frame_interval`` frames that fits in the clip (at
    most ``max_windows``, the first ones), all shifted by one random offset within the slack:
    [K, num_frames] indices, increasing across windows too. A clip shorter than one window gives one
    (cut) window, as :func:`temporal_crop_indices` does."""
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    span = num_frames * frame_interval
    count = max(1, total_frames // span)
    if max_windows is not None:
        count = min(count, int(max_windows))
    offset = int(rng.integers(0, max(0, total_frames - count * span) + 1))
    return np.stack([window_indices(offset + k * span, total_frames, num_frames, frame_interval)
                     for k in range(count)])


def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Smallest (h, w) with the source's aspect ratio that covers (target_h, target_w)."""
    scale_h, scale_w = target_h / height, target_w / width
    if scale_h > scale_w:
        return target_h, max(target_w, round(width * scale_h))
    return max(target_h, round(height * scale_w)), target_w


def _centre_crop(frames: np.ndarray, target_h: int, target_w: int) -> np.ndarray:
    h, w = frames.shape[-3], frames.shape[-2]
    top, left = int(round((h - target_h) / 2)), int(round((w - target_w) / 2))
    return frames[..., top : top + target_h, left : left + target_w, :]


def decode_video_frames(
    path: str | Path, indices: Sequence[int], size: tuple[int, int] | None = None
) -> tuple[np.ndarray, float]:
    """Decode the frames at ``indices`` (sorted, 0-based) of a video: (uint8 [T, h, w, 3], fps).

    ``size`` = (h, w) scales while converting to RGB. Seeks to the keyframe before the first needed
    frame and stops after the last one. Frame numbers come from presentation timestamps at the
    stream's average rate (exact for constant-frame-rate files).
    """
    wanted = np.asarray(indices, dtype=np.int64)
    if wanted.size == 0 or np.any(np.diff(wanted) < 0) or wanted[0] < 0:
        raise ValueError(f"indices must be non-empty, sorted and non-negative, got {list(wanted)}")
    first, last = int(wanted[0]), int(wanted[-1])
    needed = set(wanted.tolist())
    convert: dict[str, Any] = {"format": "rgb24"}
    if size is not None:
        convert.update(height=int(size[0]), width=int(size[1]), interpolation="AREA")
    for seek in (True, False):
        got: dict[int, np.ndarray] = {}
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate or stream.time_base is None:
                raise DecodeError(f"{path}: unknown frame rate or time base")
            rate, time_base = Fraction(rate), Fraction(stream.time_base)
            start = stream.start_time or 0
            if seek and first > 0:
                # aim half a frame early so rounding never lands after the first needed frame
                target = start + int((Fraction(first) - Fraction(1, 2)) / rate / time_base)
                container.seek(max(start, target), stream=stream, backward=True, any_frame=False)
            landed = None
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                index = round((frame.pts - start) * time_base * rate)
                if landed is None:
                    landed = index
                if index in needed and index not in got:
                    got[index] = frame.to_ndarray(**convert)
                if index >= last:
                    break
        if seek and first > 0 and landed is not None and landed > first:
            continue  # the seek overshot (odd index or timestamps): decode from the start instead
        break
    missing = [int(i) for i in wanted if int(i) not in got]
    if missing:
        raise DecodeError(f"{path}: could not decode frame(s) {missing[:5]} (of {len(wanted)} wanted)")
    return np.stack([got[int(i)] for i in wanted]), float(rate)


def decode_all_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame at native size (the 1.1 way; used as the benchmark baseline)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise DecodeError(f"{path}: no decodable frames")
    return np.stack(frames), fps


def resize_crop(frames: np.ndarray, target_h: int, target_w: int) -> np.ndarray:
    """Resize uint8 [T, h, w, 3] frames to cover (target_h, target_w) and centre-crop (PIL bicubic)."""
    h, w = frames.shape[1:3]
    sh, sw = cover_size(h, w, target_h, target_w)
    if (sh, sw) != (h, w):
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((sw, sh), Image.Resampling.BICUBIC)) for f in frames]
        )
    return np.ascontiguousarray(_centre_crop(frames, target_h, target_w))


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return video.div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------
def _seed_for(base_seed: int, epoch: int, rank: int, worker_id: int) -> int:
    return int(np.random.SeedSequence([base_seed, epoch, rank, worker_id + 1]).generate_state(1, np.uint64)[0])


class VideoBucketDataset(torch.utils.data.Dataset):
    """A bucket table (or any clip table with ``path``, ``text``, ``num_frames``, ``height``,
    ``width``, ``fps``) as training samples.

    Args:
        table: one row per sample; row positions are the sampler's ``SampleKey.row``.
        frame_interval: temporal stride of the stage.
        root: base folder for relative ``path`` values.
        seed, rank: base seed and data-parallel rank, mixed into every worker's seed.
        max_retries: decode failures in a row tolerated per item before giving up.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        *,
        frame_interval: int = 1,
        root: str | Path | None = None,
        seed: int = 0,
        rank: int = 0,
        max_retries: int = 10,
    ) -> None:
        missing = [c for c in ("path", "text", "num_frames", "height", "width") if c not in table.columns]
        if missing:
            raise ValueError(f"table lacks column(s) {', '.join(missing)}")
        if frame_interval < 1:
            raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
        self.table = table.reset_index(drop=True)
        self.frame_interval = int(frame_interval)
        self.root = Path(root) if root is not None else None
        self.seed = int(seed)
        self.rank = int(rank)
        self.max_retries = int(max_retries)
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._members: dict[str, np.ndarray] = {}
        self._failed: set[int] = set()
        self._paths = self.table["path"].astype(str).to_numpy()
        self._frames = self.table["num_frames"].to_numpy(dtype=np.int64)
        self._pixels = (self.table["height"].to_numpy(dtype=np.int64) * self.table["width"].to_numpy(dtype=np.int64))

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """New epoch: workers started after this call draw from a fresh seed."""
        self.epoch = int(epoch)
        self._rng = None

    def seed_worker(self, worker_id: int) -> int:
        """Seed numpy, ``random``, torch and this dataset's generator for one worker; returns the seed."""
        seed = _seed_for(self.seed, self.epoch, self.rank, worker_id)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        torch.manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        return seed

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # main process (num_workers=0)
            self._rng = np.random.default_rng(_seed_for(self.seed, self.epoch, self.rank, -1))
        return self._rng

    def path_of(self, row: int) -> Path:
        """The file of table row ``row`` (relative paths resolved against ``root``)."""
        return self._path(row)

    def _path(self, row: int) -> Path:
        path = Path(self._paths[row])
        return self.root / path if self.root is not None and not path.is_absolute() else path

    def _key(self, key: SampleKey | Sequence[Any] | int) -> SampleKey:
        if isinstance(key, SampleKey):
            return key
        if isinstance(key, int | np.integer):
            needed = {"bucket_id", "bucket_num_frames", "bucket_height", "bucket_width"}
            if not needed <= set(self.table.columns):
                raise KeyError(f"an integer index needs a bucket table (columns {sorted(needed)}); pass a SampleKey")
            r = self.table.iloc[int(key)]
            if pd.isna(r["bucket_id"]):
                raise KeyError(f"row {int(key)} was dropped by bucketing ({r.get('drop_reason')})")
            return SampleKey(
                int(key), int(r["bucket_num_frames"]), int(r["bucket_height"]), int(r["bucket_width"]),
                str(r["bucket_id"]),
            )  # fmt: skip
        return SampleKey(*key) if len(key) == 5 else SampleKey(*key, "")

    def _read_frames(self, key: SampleKey, indices: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray]:
        """uint8 frames [N, H, W, 3] at the bucket size, the fps and the indices (drawn if None)."""
        path = self._path(key.row)
        row = self.table.iloc[key.row]
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            if key.num_frames != 1:
                raise DecodeError(f"{path}: an image cannot fill a {key.num_frames}-frame bucket")
            with Image.open(path) as image:
                frames = np.array(image.convert("RGB"))[None]  # a writable copy (torch wants one)
            return resize_crop(frames, key.height, key.width), IMAGE_FPS, np.zeros(1, dtype=np.int64)
        if indices is None:
            if key.num_frames == 1:
                indices = np.array([int(self.rng.integers(0, max(1, int(self._frames[key.row]))))])
            else:
                indices = temporal_crop_indices(
                    int(self._frames[key.row]), key.num_frames, self.frame_interval, self.rng
                )
        src_h, src_w = int(row["height"]), int(row["width"])
        size = cover_size(src_h, src_w, key.height, key.width)
        frames, fps = decode_video_frames(path, indices, size=size)
        if frames.shape[1:3] != size:  # the file's size differs from the table's
            frames = resize_crop(frames, key.height, key.width)
        return np.ascontiguousarray(_centre_crop(frames, key.height, key.width)), fps, np.asarray(indices)

    def _sample(self, key: SampleKey, frames: np.ndarray, fps: float, indices: np.ndarray) -> dict[str, Any]:
        return {
            "video": to_model_range(frames),
            "text": str(self.table.iloc[key.row]["text"]),
            "num_frames": key.num_frames,
            "height": key.height,
            "width": key.width,
            "ar": key.height / key.width,  # H/W (fix #1)
            "fps": float(fps),  # the clip's own fps, as 1.1 fed it (not divided by frame_interval)
            "path": str(self._path(key.row)),
            "row": key.row,
            "frame_indices": torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)),
        }

    def load(self, key: SampleKey) -> dict[str, Any]:
        """Load one sample for a bucket (a random window), without the failure fallback."""
        frames, fps, indices = self._read_frames(key, None)
        return self._sample(key, frames, fps, indices)

    def load_strided(self, key: SampleKey, max_frames: int | None = None) -> dict[str, Any]:
        """One sample of every ``frame_interval``-th frame of the clip (:func:`strided_indices`; at least
        the bucket's T frames; an image: its one frame), without the failure fallback. Its
        ``num_frames`` stays the bucket's T: ``video`` holds more frames, any T consecutive of which
        form a training window."""
        if self._path(key.row).suffix.lower() in IMAGE_EXTENSIONS:
            return self.load(key)
        indices = strided_indices(int(self._frames[key.row]), self.frame_interval, max_frames)
        if len(indices) < key.num_frames:
            raise DecodeError(f"{self._path(key.row)}: {self._frames[key.row]} frames give {len(indices)} at "
                              f"interval {self.frame_interval}, fewer than the bucket's {key.num_frames}")
        frames, fps, _ = self._read_frames(key, indices)
        return self._sample(key, frames, fps, indices)

    def load_windows(self, key: SampleKey, max_windows: int | None = None) -> list[dict[str, Any]]:
        """One sample per non-overlapping window of the clip (:func:`tiled_window_indices`; an image:
        its one frame), decoded in one pass, without the failure fallback."""
        if self._path(key.row).suffix.lower() in IMAGE_EXTENSIONS:
            return [self.load(key)]
        windows = tiled_window_indices(int(self._frames[key.row]), key.num_frames, self.frame_interval, self.rng,
                                       max_windows)
        frames, fps, _ = self._read_frames(key, windows.reshape(-1))
        t = key.num_frames
        return [self._sample(key, frames[k * t : (k + 1) * t], fps, windows[k]) for k in range(len(windows))]

    def _replacement(self, key: SampleKey) -> int | None:
        """Another row for the same bucket: first rows the table put there, else rows big enough."""
        if key.bucket_id not in self._members:
            rows = np.empty(0, dtype=np.int64)
            if "bucket_id" in self.table.columns and key.bucket_id:
                rows = np.flatnonzero((self.table["bucket_id"] == key.bucket_id).fillna(False).to_numpy())
            if rows.size <= 1:
                long_enough = (
                    self._frames == 1 if key.num_frames == 1 else self._frames > key.num_frames * self.frame_interval
                )
                rows = np.flatnonzero(long_enough & (self._pixels >= 0.8 * key.height * key.width))
            self._members[key.bucket_id] = rows
        rows = self._members[key.bucket_id]
        rows = rows[~np.isin(rows, list(self._failed | {key.row}))]
        return int(self.rng.choice(rows)) if rows.size else None

    def _with_fallback(self, key: SampleKey, load: Any) -> Any:
        """``load(key)``; a file that fails is logged and replaced by another row of the same bucket."""
        errors = []
        for _ in range(self.max_retries + 1):
            try:
                return load(key)
            except (DecodeError, av.error.FFmpegError, OSError, ValueError) as error:
                errors.append(f"{self._path(key.row)}: {error}")
                self._failed.add(key.row)
                replacement = self._replacement(key)
                logger.warning(
                    "could not load %s (%s); replacing it with row %s of bucket %s",
                    self._path(key.row), error, replacement, key.bucket_id or (key.num_frames, key.height, key.width),
                )  # fmt: skip
                if replacement is None:
                    break
                key = key._replace(row=replacement)
        raise RuntimeError(f"no loadable sample for bucket {key.bucket_id}: " + "; ".join(errors[-3:]))

    def __getitem__(self, index: SampleKey | Sequence[Any] | int) -> dict[str, Any]:
        return self._with_fallback(self._key(index), self.load)

    def strided(self, index: SampleKey | Sequence[Any] | int, max_frames: int | None = None) -> dict[str, Any]:
        """:meth:`load_strided` with the failure fallback of ``__getitem__``."""
        return self._with_fallback(self._key(index), lambda key: self.load_strided(key, max_frames))

    def windows(self, index: SampleKey | Sequence[Any] | int, max_windows: int | None = None) -> list[dict[str, Any]]:
        """:meth:`load_windows` with the failure fallback of ``__getitem__`` (a replacement row's
        samples carry that row's ``row``, ``path`` and ``text``)."""
        return self._with_fallback(self._key(index), lambda key: self.load_windows(key, max_windows))


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: per-worker seeding of a :class:`VideoBucketDataset`."""
    info = torch.utils.data.get_worker_info()
    if info is None or not isinstance(info.dataset, VideoBucketDataset):
        raise RuntimeError("worker_init_fn must run in a DataLoader worker over a VideoBucketDataset")
    info.dataset.seed_worker(worker_id)


def collate_bucket_batch(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch of one bucket: video [B, 3, T, H, W], micro-conditions as float32 [B] tensors."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(s["video"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"a batch must come from one bucket; got video shapes {sorted(shapes)}")
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "text": [s["text"] for s in samples],
        **{
            name: torch.tensor([float(s[name]) for s in samples], dtype=torch.float32)
            for name in ("num_frames", "height", "width", "ar", "fps")
        },
        "path": [s["path"] for s in samples],
        "row": torch.tensor([s["row"] for s in samples], dtype=torch.long),
        "frame_indices": torch.stack([s["frame_indices"] for s in samples]),
    }
