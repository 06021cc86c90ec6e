"""VBench-style video quality dimensions computed offline on decoded frames.

Every function takes one video as ``frames`` (T×H×W×3 uint8 RGB) and returns a score in [0, 1]
(``is_dynamic`` returns a bool; the *dynamic degree* of a set of videos is the fraction that are
dynamic). Each dimension has a ``METHODS`` entry naming how it is computed, which the report prints
next to the score, because the classical fall-backs are not VBench's networks:

==================== ===================================== ===========================================
dimension            VBench                                here
==================== ===================================== ===========================================
temporal_flickering  (255 − MAE of consecutive frames)/255 same formula, restricted to static pixels
                                                           (Farneback flow magnitude below a threshold)
motion_smoothness    AMT-S interpolates dropped frames,    Farneback flow-warp interpolation of every
                     (255 − MAE)/255                       middle frame from its two neighbours, same map
dynamic_degree       RAFT flow, top-5% magnitude per pair  Farneback flow, same top-5% rule and
                     > 6·min(H,W)/256 on enough pairs      thresholds; pairs of noise frames (Immerkær
                                                           σ > 10) are not motion
subject_consistency  DINO ViT-B/16 cosine to first and     DINO/CLIP features from a local path, or a
                     previous frame                        colour histogram + HOG of the foreground; a
                                                           frame without a subject scores 0
background_consist.  CLIP ViT-B/32, same formula           CLIP features from a local path, or a colour
                                                           histogram + coarse HOG of the background,
                                                           times the share of background pixels that
                                                           keep their colour
aesthetic_quality    LAION aesthetic MLP on CLIP ViT-L/14  the same when both weights are configured,
                                                           else (sharpness·exposure·colour)^⅓·(1−noise)
imaging_quality      MUSIQ (SPAQ)                          CLIP-IQA when a CLIP path is configured, else
                                                           Laplacian-variance sharpness damped by an
                                                           Immerkær noise estimate (no-reference)
==================== ===================================== ===========================================

The classical fall-backs are built so that noise cannot pass for a good video (the tests score pure
noise, a static gray clip and rendered corpus clips on every dimension): independent random frames
have near-identical colour histograms and HOG statistics, and Farneback flow finds large "motion" in
them, so the consistency dimensions also ask that the subject exist and the background pixels keep
their colour, and dynamic degree ignores pairs of frames that are mostly noise.

The pretrained paths live in :mod:`opensora_mlops.evaluation.features`; this module only needs a
callable ``frames -> features [T, D]`` for the consistency dimensions (the VBench formula on them,
unchanged, so the numbers compare with VBench's).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

FeatureFn = Callable[[np.ndarray], np.ndarray]

METHODS: dict[str, str] = {
    "temporal_flickering": "(255 - MAE of consecutive frames on static pixels) / 255; static = Farneback "
    "flow magnitude < threshold (VBench formula, classical static mask)",
    "motion_smoothness": "(255 - MAE between each middle frame and its Farneback flow-warp interpolation "
    "from the two neighbours) / 255 (VBench uses AMT-S interpolation)",
    "dynamic_degree": "fraction of videos whose top-5% Farneback flow magnitude exceeds 6*min(H,W)/256 on "
    "round(4*T/16) frame pairs (VBench rule; VBench uses RAFT); pairs with a noise frame (Immerkaer sigma "
    "> 10) do not count",
    "subject_consistency": "mean over frames of (cos to first frame + cos to previous frame)/2 of "
    "subject (pixels far from the frame's median colour) colour-histogram + HOG features; a pair where "
    "either frame has no subject scores 0 (classical; DINO when configured)",
    "background_consistency": "mean over frames of (sim to first frame + sim to previous frame)/2, sim = "
    "cos of background colour-histogram + coarse HOG features x the share of background pixels within 32 "
    "RGB of their colour in the other frame (classical; CLIP cosine when configured)",
    "aesthetic_quality": "cube root of sharpness x exposure x colourfulness, times (1 - noise), per frame "
    "(classical; "
    "LAION aesthetic MLP on CLIP when configured)",
    "imaging_quality": "Laplacian-variance sharpness x (1 - Immerkaer noise estimate), no-reference "
    "(classical; CLIP-IQA when configured; VBench uses MUSIQ)",
}


def check_frames(frames: np.ndarray, min_frames: int = 1, where: str = "frames") -> np.ndarray:
    """Validate a T×H×W×3 uint8 video and return it as an array."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{where} must have shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{where} must be uint8, got {frames.dtype}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"{where} needs at least {min_frames} frames, got {frames.shape[0]}")
    if frames.shape[1] < 8 or frames.shape[2] < 8:
        raise ValueError(f"{where} frames are too small to score: {frames.shape[1]}x{frames.shape[2]}")
    return frames


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def contrast_gray(*frames: np.ndarray) -> list[np.ndarray]:
    """Project RGB frames onto their first colour principal component, scaled jointly to 0..255.

    Plain luma can erase a subject: the corpus's red (230, 30, 30) and gray (105, 105, 105) differ by
    a few grey levels in luma. The principal component of the frames' colours maximises contrast, so
    flow has edges to follow. The same projection and scale apply to every frame given.
    """
    pixels = np.concatenate([f.reshape(-1, 3) for f in frames]).astype(np.float32)
    step = max(1, len(pixels) // 20000)
    sample = pixels[::step]
    centred = sample - sample.mean(axis=0)
    covariance = centred.T @ centred / max(1, len(sample) - 1)
    _, vectors = np.linalg.eigh(covariance)
    axis = vectors[:, -1]
    if float(covariance.trace()) < 1e-6:  # flat frames: fall back to luma
        axis = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    axis = axis if axis.sum() >= 0 else -axis
    projected = [f.astype(np.float32) @ axis for f in frames]
    low = min(float(p.min()) for p in projected)
    high = max(float(p.max()) for p in projected)
    scale = 255.0 / max(high - low, 1e-6)
    return [np.clip((p - low) * scale, 0, 255).astype(np.uint8) for p in projected]


def farneback_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Dense optical flow (H×W×2, pixels) from RGB frame ``prev`` to ``nxt`` (OpenCV Farneback on the
    frames' :func:`contrast_gray` projection).

    A small window (7 px) over a 4-level pyramid: generated clips are small and their subjects
    smaller, and larger windows average a moving subject's flow with the static background around it.
    """
    gray_prev, gray_next = contrast_gray(prev, nxt)
    return cv2.calcOpticalFlowFarneback(
        gray_prev,
        gray_next,
        None,
        pyr_scale=0.5,
        levels=4,
        winsize=7,
        iterations=5,
        poly_n=5,
        poly_sigma=1.1,
        flags=0,
    )


def _warp(frame: np.ndarray, flow: np.ndarray, scale: float) -> np.ndarray:
    """Backward-warp ``frame``: out(x) = frame(x + scale * flow(x)) (bilinear, border replicate)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = grid_x + scale * flow[..., 0]
    map_y = grid_y + scale * flow[..., 1]
    return cv2.remap(frame, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------------------- temporal
def temporal_flickering(frames: np.ndarray, static_flow_threshold: float = 0.5) -> float:
    """VBench temporal flickering: (255 − mean abs difference of consecutive frames) / 255.

    Only static pixels count (flow magnitude below ``static_flow_threshold`` pixels), so a moving
    subject is not mistaken for flicker; if no pixel is static in a pair, the whole frame counts.
    One frame cannot flicker: score 1.
    """
    frames = check_frames(frames)
    if frames.shape[0] < 2:
        return 1.0
    maes = []
    for prev, nxt in zip(frames[:-1], frames[1:]):
        magnitude = np.linalg.norm(farneback_flow(prev, nxt), axis=-1)
        static = magnitude < static_flow_threshold
        diff = np.abs(prev.astype(np.float32) - nxt.astype(np.float32)).mean(axis=-1)
        maes.append(float(diff[static].mean()) if static.any() else float(diff.mean()))
    return float((255.0 - np.mean(maes)) / 255.0)


def interpolate_middle(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Predict the frame halfway between ``prev`` and ``nxt`` by bidirectional flow warping.

    A pixel x of the middle frame sits at x − ½·f(x) in ``prev`` and x + ½·f(x) in ``nxt`` (f the
    prev→next flow, assumed smooth); the two warps are averaged.
    """
    forward = farneback_flow(prev, nxt)
    backward = farneback_flow(nxt, prev)
    from_prev = _warp(prev.astype(np.float32), forward, -0.5)
    from_next = _warp(nxt.astype(np.float32), backward, -0.5)
    return np.clip((from_prev + from_next) / 2.0, 0, 255)


def motion_smoothness(frames: np.ndarray) -> float:
    """VBench motion smoothness: how well each middle frame is predicted by interpolating its neighbours.

    Score (255 − MAE(frame_i, interp(frame_{i−1}, frame_{i+1}))) / 255, averaged over i. Smooth motion
    interpolates well; jerky or random motion does not. Fewer than 3 frames: score 1.
    """
    frames = check_frames(frames)
    if frames.shape[0] < 3:
        return 1.0
    maes = []
    for i in range(1, frames.shape[0] - 1):
        predicted = interpolate_middle(frames[i - 1], frames[i + 1])
        maes.append(float(np.abs(predicted - frames[i].astype(np.float32)).mean()))
    return float((255.0 - np.mean(maes)) / 255.0)


#: Immerkær noise σ (grey levels) above which a frame is treated as noise by :func:`is_dynamic`: clean
#: rendered or camera frames measure 0.1–5, uniform noise ~50, Gaussian noise of σ 50 ~33.
NOISE_FRAME_SIGMA = 10.0


def is_dynamic(frames: np.ndarray, threshold_at_256: float = 6.0, max_noise: float = NOISE_FRAME_SIGMA) -> bool:
    """VBench dynamic-degree rule for one video.

    For each consecutive pair, the mean of the top 5% flow magnitudes; the video is dynamic when at
    least round(4·T/16) (≥ 1) pairs exceed ``threshold_at_256 · min(H, W) / 256`` pixels. A pair where
    either frame's Immerkær noise σ exceeds ``max_noise`` does not count: optical flow between two noise
    frames is large and meaningless, and VBench's rule would call pure noise dynamic.
    """
    frames = check_frames(frames, min_frames=2)
    t, h, w, _ = frames.shape
    threshold = threshold_at_256 * min(h, w) / 256.0
    needed = max(1, round(4 * t / 16))
    noisy = [noise_sigma(_gray(f)) > max_noise for f in frames]
    above = 0
    for index, (prev, nxt) in enumerate(zip(frames[:-1], frames[1:])):
        if noisy[index] or noisy[index + 1]:
            continue
        magnitude = np.linalg.norm(farneback_flow(prev, nxt), axis=-1).ravel()
        k = max(1, int(0.05 * magnitude.size))
        top = np.partition(magnitude, magnitude.size - k)[-k:]
        if float(top.mean()) > threshold:
            above += 1
    return above >= needed


# ----------------------------------------------------------------------------- appearance features
def hog_features(gray: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    """Histogram of oriented gradients (unsigned, ``bins`` orientations per ``cell``×``cell`` cell,
    2×2-cell blocks L2-normalised), a plain NumPy HOG as OpenCV 5 dropped ``HOGDescriptor``."""
    gray = gray.astype(np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=1)
    magnitude, angle = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    angle = np.mod(angle, 180.0)
    cells_y, cells_x = gray.shape[0] // cell, gray.shape[1] // cell
    if cells_y < 2 or cells_x < 2:
        raise ValueError(f"image {gray.shape} too small for HOG with {cell}-pixel cells")
    magnitude = magnitude[: cells_y * cell, : cells_x * cell]
    bin_index = np.minimum((angle[: cells_y * cell, : cells_x * cell] / (180.0 / bins)).astype(int), bins - 1)
    hist = np.zeros((cells_y, cells_x, bins), dtype=np.float32)
    cell_y = np.repeat(np.arange(cells_y), cell)[:, None].repeat(cells_x * cell, axis=1)
    cell_x = np.repeat(np.arange(cells_x), cell)[None, :].repeat(cells_y * cell, axis=0)
    np.add.at(hist, (cell_y, cell_x, bin_index), magnitude)
    blocks = np.concatenate([hist[:-1, :-1], hist[1:, :-1], hist[:-1, 1:], hist[1:, 1:]], axis=-1).reshape(
        -1, 4 * bins
    )
    blocks /= np.linalg.norm(blocks, axis=1, keepdims=True) + 1e-6
    return blocks.ravel()


def colour_histogram(frame: np.ndarray, mask: np.ndarray | None = None, bins: int = 8) -> np.ndarray:
    """Normalised 3-D HSV histogram (``bins``³) of the pixels under ``mask`` (all pixels if None)."""
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    mask_u8 = None if mask is None else mask.astype(np.uint8) * 255
    hist = cv2.calcHist([hsv], [0, 1, 2], mask_u8, [bins] * 3, [0, 180, 0, 256, 0, 256]).ravel()
    total = hist.sum()
    return hist / total if total > 0 else hist


def foreground_masks(frames: np.ndarray, threshold: float = 50.0, max_fraction: float = 0.5) -> np.ndarray:
    """Boolean T×H×W subject masks: pixels farther than ``threshold`` (RGB distance) from the frame's
    median colour, i.e. a subject standing out from a dominant background.

    A frame where that covers more than ``max_fraction`` has no dominant background (noise, a busy
    scene); its mask is all False (no subject/background split).
    """
    data = frames.astype(np.float32)
    median = np.median(data.reshape(len(frames), -1, 3), axis=1)
    masks = np.linalg.norm(data - median[:, None, None, :], axis=-1) > threshold
    masks[masks.mean(axis=(1, 2)) > max_fraction] = False
    return masks


def _subject_crop(frame: np.ndarray, mask: np.ndarray, size: int = 64) -> np.ndarray:
    """The foreground's bounding box, background pixels flattened to their mean colour (so background
    texture around the subject does not enter its HOG), resized to ``size``²."""
    if mask.any() and not mask.all():
        frame = np.where(mask[..., None], frame, frame[~mask].mean(axis=0).astype(np.uint8))
    ys, xs = np.nonzero(mask)
    crop = frame if ys.size == 0 else frame[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def subject_features(frames: np.ndarray) -> np.ndarray:
    """Classical subject features [T, D]: colour histogram of the subject pixels (:func:`foreground_masks`;
    the whole frame when there is no subject) + HOG of its bounding box with the background flattened."""
    frames = check_frames(frames)
    masks = foreground_masks(frames)
    features = []
    for frame, mask in zip(frames, masks):
        crop = _subject_crop(frame, mask)
        hist = colour_histogram(frame, mask if mask.any() else None)
        hog = hog_features(contrast_gray(crop)[0])
        features.append(
            np.concatenate([hist / (np.linalg.norm(hist) + 1e-8), hog / (np.linalg.norm(hog) + 1e-8)])
        )
    return np.stack(features)


def background_features(frames: np.ndarray) -> np.ndarray:
    """Classical background features [T, D]: colour histogram of the non-subject pixels + a coarse
    HOG (16-pixel cells at 64×64) of the frame with its subject filled with the background's mean
    colour (scene layout without the subject)."""
    frames = check_frames(frames)
    masks = foreground_masks(frames)
    features = []
    for frame, mask in zip(frames, masks):
        background = ~mask
        hist = colour_histogram(frame, background)
        filled = np.where(mask[..., None], frame[background].mean(axis=0).astype(np.uint8), frame)
        small = cv2.resize(filled, (64, 64), interpolation=cv2.INTER_AREA)
        hog = hog_features(contrast_gray(small)[0], cell=16)
        features.append(
            np.concatenate([hist / (np.linalg.norm(hist) + 1e-8), hog / (np.linalg.norm(hog) + 1e-8)])
        )
    return np.stack(features)


def _pair_cosines(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max(0, cos(f_0, f_i)), max(0, cos(f_{i−1}, f_i))) for i ≥ 1."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [T, D], got shape {features.shape}")
    normed = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    to_first = np.clip(normed[1:] @ normed[0], 0, None)
    to_prev = np.clip(np.sum(normed[1:] * normed[:-1], axis=1), 0, None)
    return to_first, to_prev


def feature_consistency(features: np.ndarray) -> float:
    """VBench consistency formula on per-frame features [T, D]: mean over i ≥ 1 of
    (max(0, cos(f_0, f_i)) + max(0, cos(f_{i−1}, f_i))) / 2. One frame: 1."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 2 and features.shape[0] < 2:
        return 1.0
    to_first, to_prev = _pair_cosines(features)
    return float(np.mean((to_first + to_prev) / 2.0))


def pixel_agreement(
    first: np.ndarray, second: np.ndarray, keep: np.ndarray, tolerance: float = 32.0
) -> float:
    """Share of the ``keep`` pixels whose RGB colour differs by at most ``tolerance`` between two frames
    (0 when no pixel is kept). A static background keeps ~all of them (compression and a VAE move
    colours by a few levels); two independent noise frames keep ~0.5 % (uniform) or less."""
    if not keep.any():
        return 0.0
    distance = np.linalg.norm(first.astype(np.float32) - second.astype(np.float32), axis=-1)
    return float((distance[keep] <= tolerance).mean())


def subject_consistency(frames: np.ndarray, features: FeatureFn | None = None) -> float:
    """Subject consistency: :func:`feature_consistency` of ``features(frames)`` (DINO/CLIP when given).

    Classical (no ``features``): the formula on :func:`subject_features`, with the similarity of a pair
    set to 0 when either frame has no subject (:func:`foreground_masks` finds none: noise, an empty
    frame): whole-frame histograms of random frames are near-identical, and a subject that is not
    there is not consistent. One frame: 1.
    """
    frames = check_frames(frames)
    if features is not None:
        return feature_consistency(features(frames))
    if frames.shape[0] < 2:
        return 1.0
    present = foreground_masks(frames).any(axis=(1, 2)).astype(np.float64)
    to_first, to_prev = _pair_cosines(subject_features(frames))
    to_first = to_first * present[1:] * present[0]
    to_prev = to_prev * present[1:] * present[:-1]
    return float(np.mean((to_first + to_prev) / 2.0))


def background_consistency(
    frames: np.ndarray, features: FeatureFn | None = None, tolerance: float = 32.0
) -> float:
    """Background consistency: :func:`feature_consistency` of ``features(frames)`` (CLIP when given).

    Classical (no ``features``): the formula with the similarity of frames a, b = cos of their
    :func:`background_features` × :func:`pixel_agreement` over the pixels that are background in both.
    The features alone rate independent noise frames ~0.95 (their histograms and gradient statistics
    match); their pixels do not keep their colour, so the product rates noise ~0. One frame: 1.
    """
    frames = check_frames(frames)
    if features is not None:
        return feature_consistency(features(frames))
    if frames.shape[0] < 2:
        return 1.0
    background = ~foreground_masks(frames)
    to_first, to_prev = _pair_cosines(background_features(frames))
    for i in range(1, frames.shape[0]):
        to_first[i - 1] *= pixel_agreement(frames[0], frames[i], background[0] & background[i], tolerance)
        to_prev[i - 1] *= pixel_agreement(frames[i - 1], frames[i], background[i - 1] & background[i], tolerance)
    return float(np.mean((to_first + to_prev) / 2.0))


# ------------------------------------------------------------------------------ per-frame quality
def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the Laplacian (focus / sharpness measure)."""
    return float(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F, ksize=3).var())


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkær's fast noise standard deviation estimate (grey levels) from the
    [[1,−2,1],[−2,4,−2],[1,−2,1]] operator, which cancels image structure up to second order."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = cv2.filter2D(gray.astype(np.float32), -1, kernel)[1:-1, 1:-1]
    h, w = response.shape
    return float(np.sqrt(np.pi / 2.0) * np.abs(response).sum() / (6.0 * h * w))


def colourfulness(frame: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness M (0 for grey; ~100+ for very colourful images)."""
    rgb = frame.astype(np.float32)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def frame_aesthetic(frame: np.ndarray, noise_scale: float = 20.0) -> float:
    """Classical aesthetic score of one frame in [0, 1]: geometric mean of
    sharpness (Laplacian variance saturating at ~100), exposure (mean luma near mid-grey, few clipped
    pixels) and colourfulness (Hasler–Süsstrunk M saturating at ~60), times cleanliness (1 − Immerkær
    noise σ / ``noise_scale``, clipped at 0): noise is sharp and colourful, and inside the geometric mean
    it still scored above clean frames on dark backgrounds; as a factor it zeroes the score."""
    gray = _gray(frame)
    lap = laplacian_variance(gray)
    sharpness = lap / (lap + 100.0)
    luma = gray.astype(np.float32) / 255.0
    clipped = float(np.mean((luma < 0.02) | (luma > 0.98)))
    exposure = max(0.0, 1.0 - 2.0 * abs(float(luma.mean()) - 0.5)) * (1.0 - clipped)
    colour = colourfulness(frame)
    colour_score = colour / (colour + 60.0)
    clean = 1.0 - min(1.0, noise_sigma(gray) / noise_scale)
    # a small floor keeps one failed component from zeroing the product entirely
    parts = np.array([sharpness, exposure, colour_score]) * 0.98 + 0.02
    return float(np.prod(parts) ** (1.0 / len(parts)) * clean)


def frame_imaging_quality(frame: np.ndarray, noise_scale: float = 20.0) -> float:
    """No-reference imaging quality of one frame in [0, 1]: sharpness (Laplacian variance, saturating)
    times (1 − noise), noise = Immerkær σ / ``noise_scale`` clipped to [0, 1]. Sharp clean frames score
    high; blurred or noisy ones low."""
    gray = _gray(frame)
    lap = laplacian_variance(gray)
    sharpness = lap / (lap + 100.0)
    noise = min(1.0, noise_sigma(gray) / noise_scale)
    return float(sharpness * (1.0 - noise))


def aesthetic_quality(frames: np.ndarray, scorer: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """Mean per-frame aesthetic score in [0, 1]: ``scorer(frames) -> [T]`` (e.g. LAION MLP on CLIP,
    already divided by 10) when given, else :func:`frame_aesthetic`."""
    frames = check_frames(frames)
    if scorer is not None:
        return float(np.clip(np.mean(scorer(frames)), 0.0, 1.0))
    return float(np.mean([frame_aesthetic(f) for f in frames]))


def imaging_quality(frames: np.ndarray, scorer: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """Mean per-frame imaging quality in [0, 1]: ``scorer(frames) -> [T]`` (e.g. CLIP-IQA) when given,
    else :func:`frame_imaging_quality`."""
    frames = check_frames(frames)
    if scorer is not None:
        return float(np.clip(np.mean(scorer(frames)), 0.0, 1.0))
    return float(np.mean([frame_imaging_quality(f) for f in frames]))
