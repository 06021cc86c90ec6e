import hashlib

import numpy as np
import pytest

from opensora_mlops.data.video_io import read_video, write_gif, write_video


def _moving_square(t=12, h=64, w=96):
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, 20:40, 4 * i : 4 * i + 20] = (230, 40, 40)
    return frames


def test_mp4_round_trip_keeps_count_size_fps_and_content(tmp_path):
    frames = _moving_square()
    path = write_video(tmp_path / "a.mp4", frames, fps=25)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape
    assert fps == pytest.approx(25)
    # lossy codec: mean error small, the red square where it was drawn
    assert np.abs(decoded.astype(int) - frames).mean() < 6
    assert decoded[5, 30, 30, 0] > 180 and decoded[5, 30, 30, 2] < 90


def test_odd_sizes_are_padded_to_even(tmp_path):
    decoded, _ = read_video(write_video(tmp_path / "odd.mp4", _moving_square(h=63, w=95), fps=24))
    assert decoded.shape[1:3] == (64, 96)


def test_single_thread_encodes_are_byte_identical_whatever_the_heap_holds(tmp_path):
    # decoding between encodes leaves the heap in a different state each time; x264's AVX-512 code reads
    # past the planes' end, so with it 4 of 5 runs of this test failed on an AVX-512 CPU
    rng = np.random.default_rng(0)
    frames = (_moving_square(t=30).astype(int) + rng.integers(-4, 5, (30, 64, 96, 3))).clip(0, 255).astype(np.uint8)
    digests = set()
    for i in range(40):
        path = write_video(tmp_path / f"{i}.mp4", frames, fps=24, crf=20, threads=1)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        read_video(path)
    assert len(digests) == 1


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8), np.uint8), fps=24)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.float32), fps=24)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.uint8), fps=0)


def test_gif_written(tmp_path):
    from PIL import Image

    path = write_gif(tmp_path / "a.gif", _moving_square(), fps=12)
    with Image.open(path) as im:
        assert im.n_frames == 12
