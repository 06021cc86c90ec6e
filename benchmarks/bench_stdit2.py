"""ST-DiT-2 speed: training step (forward + backward) and sampling step (forward), tokens/s, MFU on GPU.

    python benchmarks/bench_stdit2.py --quick                       # CPU, tiny config, < 1 min
    python benchmarks/bench_stdit2.py                               # CPU, tiny config, more sizes
    python benchmarks/bench_stdit2.py --device cuda                 # STDiT2-XL/2, bf16, 240x426 x 16/64 frames
    python benchmarks/bench_stdit2.py --reference-repo /tmp/opensora-v1.1.0   # also time Open-Sora 1.1
    python benchmarks/bench_stdit2.py --timer cpu ...               # CPU time of 1 thread (shared machines)
    python benchmarks/bench_stdit2.py --dtype bfloat16 --compare-fp32   # bf16 vs fp32: speed and output error

``--reference-repo`` points at a local checkout of hpcaitech/Open-Sora at tag v1.1.0 (never part of this
project). Its STDiT2 is built with the same config, loaded with *our* weights, checked for agreement with
our model in its legacy mode (``qk_norm_legacy=True, final_layer_legacy=True``) and timed on the same
inputs. 1.1 imports packages it needs only on GPU clusters; the loader supplies what it must:
``xformers`` (CUDA only) by an SDPA emulation of ``memory_efficient_attention`` with a block-diagonal
mask (one SDPA per sample, the same arithmetic), ``mmengine``'s registry, and 1.1's checkpoint
helpers (unused by the model). ``timm`` and ``rotary-embedding-torch`` must be importable (e.g.
``pip install --target /tmp/refdeps --no-deps timm==0.9.16 rotary-embedding-torch==0.5.3`` and
``PYTHONPATH=/tmp/refdeps``); the script says so when they are missing.

``--compare-fp32`` (with ``--dtype bfloat16``) builds the model in float32, casts a copy of the same weights
to bfloat16 (as ``generate --dtype bf16`` and ``evaluation.generation.dtype: bf16`` do), times both in
interleaved rounds and reports the max / mean absolute difference of the bf16 sampling step's output from
the fp32 one on the same inputs. ``--sdpa math|flash`` pins the attention kernel (default: PyTorch's choice,
the flash kernel on CPU).

Model FLOPs (for MFU) are counted analytically: 2 x (multiply-adds of every linear/conv on the tokens it
sees: video tokens, caption tokens) + the attention matmuls (spatial S^2, temporal T^2, cross S*L per
frame); a training step is 3 x a forward. MFU uses ``--peak-tflops`` (989 = H100/H200 bf16 dense).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from opensora_mlops.models.stdit2 import STDiT2, build_model

# --- inputs and FLOPs ------------------------------------------------------------------------------------


def make_inputs(model: STDiT2, batch: int, frames: int, lat_h: int, lat_w: int, device, caption_tokens=None):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    length = cfg.model_max_length
    real = caption_tokens or max(1, length * 3 // 5)
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, :real] = 1
    f = cfg.vae_downsample_factor
    return dict(
        x=torch.randn(batch, cfg.in_channels, frames, lat_h, lat_w, generator=g).to(device),
        timestep=torch.randint(0, 1000, (batch,), generator=g).float().to(device),
        y=torch.randn(batch, length, cfg.caption_channels, generator=g).to(device),
        mask=mask.to(device),
        height=torch.full((batch,), float(lat_h * f), device=device),
        width=torch.full((batch,), float(lat_w * f), device=device),
        ar=torch.full((batch,), lat_h / lat_w, device=device),
        fps=torch.full((batch,), 24.0, device=device),
        num_frames=torch.full((batch,), float(frames), device=device),
    )


def forward_flops(model: STDiT2, batch: int, frames: int, lat_h: int, lat_w: int) -> tuple[float, int]:
    """Analytic model FLOPs of one forward and the number of video tokens."""
    cfg = model.config
    pt, ph, pw = cfg.patch_size
    t, s = math.ceil(frames / pt), math.ceil(lat_h / ph) * math.ceil(lat_w / pw)
    c, length, tokens = cfg.hidden_size, cfg.model_max_length, batch * t * s
    per_token = cfg.depth * (8 * c * c + 2 * c * c + 2 * cfg.mlp_ratio * c * c)  # self attns, cross q/proj, mlp
    per_token += cfg.in_channels * pt * ph * pw * c + c * pt * ph * pw * cfg.out_channels
    per_text = cfg.caption_channels * c + c * c + cfg.depth * 2 * c * c  # y_proj, kv_linear per block
    attention = cfg.depth * 4 * c * batch * (t * s * s + s * t * t + t * s * length)
    return 2 * per_token * tokens + 2 * per_text * batch * length + attention, tokens


# --- timing ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, warmup: int, repeats: int, timer: str = "wall") -> float:
    """Median wall-clock seconds, or (``timer="cpu"``, one thread) the minimum CPU time of this thread:
    on a machine shared with other jobs the latter is what the code costs, not how long it waited."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = [time_once(fn, device, timer) for _ in range(repeats)]
    return min(times) if timer == "cpu" else statistics.median(times)


def time_once(fn, device, timer: str = "wall") -> float:
    clock = time.thread_time if timer == "cpu" else time.perf_counter
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def time_interleaved(fns: dict, device, warmup: int, rounds: int, inner: int, timer: str) -> dict[str, list[float]]:
    """Time several callables in alternation: each round runs every callable ``inner`` times (keeping the
    minimum CPU time / median wall time of the round), in an order that alternates between rounds, so that
    a change of machine load hits all of them alike. Returns the per-round times of each callable."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times = [time_once(fns[name], device, timer) for _ in range(inner)]
            out[name].append(min(times) if timer == "cpu" else statistics.median(times))
    return out


def spread(values: list[float], fmt: str = ".4f") -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def train_step(model, kwargs):
    def step():
        model.zero_grad(set_to_none=True)
        out = model(**kwargs)
        out.float().square().mean().backward()

    return step


def autocast_train_step(model, kwargs, device):
    """A training step of the fp32 model with the forward under bf16 autocast (what the trainer does with
    ``dtype: bf16`` and the torch_ddp plugin); backward outside the autocast region, as recommended."""
    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = model(**kwargs)
        out.float().square().mean().backward()

    return step


def sample_step(model, kwargs):
    @torch.no_grad()
    def step():
        model(**kwargs)

    return step


# --- Open-Sora 1.1 reference -----------------------------------------------------------------------------


def _xformers_emulation() -> types.ModuleType:
    """``xformers.ops`` as 1.1's cross-attention uses it, on top of SDPA (xformers has no CPU kernels)."""

    class BlockDiagonalMask:
        def __init__(self, q_seqlen, kv_seqlen):
            self.q_seqlen, self.kv_seqlen = list(q_seqlen), list(kv_seqlen)

        @classmethod
        def from_seqlens(cls, q_seqlen, kv_seqlen=None):
            return cls(q_seqlen, kv_seqlen if kv_seqlen is not None else q_seqlen)

    def memory_efficient_attention(q, k, v, p=0.0, attn_bias=None):  # [1, tokens, heads, dim]
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))
        if attn_bias is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            outs = []
            for qs, ks, vs in zip(q.split(attn_bias.q_seqlen, dim=2), k.split(attn_bias.kv_seqlen, dim=2),
                                  v.split(attn_bias.kv_seqlen, dim=2), strict=True):
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, dropout_p=p))
            out = torch.cat(outs, dim=2)
        return out.transpose(1, 2).contiguous()  # xformers returns [1, tokens, heads, dim] contiguous

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    ops.fmha = types.SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask)
    return ops


def load_reference_stdit2(repo: Path):
    """Import 1.1's ``opensora/models/stdit/stdit2.py`` from a checkout without its package __init__s."""
    missing = [name for name in ("timm", "rotary_embedding_torch", "einops", "transformers")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"--reference-repo needs {', '.join(missing)} importable (see this script's docstring)")
    root = repo / "opensora"
    if not (root / "models" / "stdit" / "stdit2.py").is_file():
        raise SystemExit(f"{repo} is not an Open-Sora v1.1.0 checkout (no opensora/models/stdit/stdit2.py)")

    def package(name: str, path: Path | None = None) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(path)] if path else []
        sys.modules[name] = module
        return module

    def load(name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    if importlib.util.find_spec("xformers") is None:
        package("xformers")
        sys.modules["xformers.ops"] = _xformers_emulation()
        sys.modules["xformers"].ops = sys.modules["xformers.ops"]
    for name in ("opensora", "opensora.models", "opensora.models.layers", "opensora.models.stdit",
                 "opensora.acceleration", "opensora.utils"):
        package(name, root.joinpath(*name.split(".")[1:]))
    registry = types.ModuleType("opensora.registry")
    registry.MODELS = types.SimpleNamespace(register_module=lambda *a, **k: (lambda obj: obj))
    sys.modules["opensora.registry"] = registry
    ckpt = types.ModuleType("opensora.utils.ckpt_utils")
    ckpt.load_checkpoint = None  # only used when 1.1 loads weights itself; we load ours
    sys.modules["opensora.utils.ckpt_utils"] = ckpt
    for name in ("acceleration.checkpoint", "acceleration.parallel_states", "acceleration.communications",
                 "models.layers.blocks", "models.stdit.stdit2"):
        module = load(f"opensora.{name}", root.joinpath(*name.split(".")).with_suffix(".py"))
    return module


def build_reference(module, ours: STDiT2):
    cfg = ours.config
    config = module.STDiT2Config(
        depth=cfg.depth, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        in_channels=cfg.in_channels, mlp_ratio=cfg.mlp_ratio, caption_channels=cfg.caption_channels,
        model_max_length=cfg.model_max_length, input_sq_size=cfg.input_sq_size, qk_norm=cfg.qk_norm,
        class_dropout_prob=cfg.class_dropout_prob, pred_sigma=cfg.pred_sigma,
    )
    reference = module.STDiT2(config)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return reference


def reference_kwargs(kwargs: dict) -> dict:
    out = dict(kwargs)
    out["y"] = kwargs["y"][:, None]  # 1.1 wants [B, 1, L, C]
    return out


# --- bf16 against fp32 -------------------------------------------------------------------------------------


def compare_dtypes(fp32_model: STDiT2, low_model: STDiT2, kwargs: dict, device, warmup: int, rounds: int,
                   inner: int, timer: str, sample_only: bool, autocast: bool = False,
                   ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Interleaved step times of the fp32 model and its low-precision copy, and the low-precision sampling
    step's error against fp32 (max and mean |diff|, and mean |fp32 output| for scale)."""
    with torch.no_grad():
        reference = fp32_model(**kwargs)
        low = low_model(**kwargs)
    diff = (low.float() - reference).abs()
    error = {"max": diff.max().item(), "mean": diff.mean().item(), "scale": reference.abs().mean().item()}
    fns = {"fp32_sample": sample_step(fp32_model, kwargs), "low_sample": sample_step(low_model, kwargs)}
    if not sample_only:
        fns |= {"fp32_train": train_step(fp32_model, kwargs), "low_train": train_step(low_model, kwargs)}
        if autocast:
            fns["autocast_train"] = autocast_train_step(fp32_model, kwargs, device)
    return time_interleaved(fns, device, warmup, rounds, inner, timer), error


# --- main --------------------------------------------------------------------------------------------------


def randomise_weights(model: STDiT2, seed: int = 0) -> None:
    """Perturb every weight so each branch does real work (a fresh model has zero output projections) and
    give the QK-RMSNorm gains values spread over [0.5, 2.5] per channel: attention is then far from
    uniform and the RoPE / QK-norm order of the temporal branch really matters for agreement."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g).to(p)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(0.5 + 2.0 * torch.rand(p.shape, generator=g).to(p))
            else:
                p.add_(noise * 0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 min on CPU)")
    parser.add_argument("--config", default=None, help="model name (default: STDiT2-tiny on CPU, XL/2 on CUDA)")
    parser.add_argument("--depth", type=int, default=None, help="override the config's depth")
    parser.add_argument("--hidden", type=int, default=None, help="override the config's hidden size")
    parser.add_argument("--heads", type=int, default=None, help="override the config's number of heads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared machine more threads mostly wait for each other)")
    parser.add_argument("--timer", default="wall", choices=["wall", "cpu"],
                        help="wall: median wall clock; cpu: minimum thread CPU time (CPU only, forces 1 thread)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated latent sizes FRAMESxHxW (default: 8x16x16,16x18x32 on CPU, "
                             "16x30x53,64x30x53 on CUDA); 'issue' = 8x18x32,16x32x32 (issue 15's sizes)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds with --reference-repo (default 5, 3 with --quick)")
    parser.add_argument("--inner", type=int, default=None,
                        help="calls per case and round with --reference-repo (default: half the repeats)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="with --dtype bfloat16: time an fp32 model and a bf16 copy of its weights in "
                             "interleaved rounds and report the bf16 sampling step's error against fp32")
    parser.add_argument("--sample-only", action="store_true", help="with --compare-fp32: no training steps")
    parser.add_argument("--autocast", action="store_true",
                        help="with --compare-fp32: also time the fp32 model's training step under bf16 autocast "
                             "(the trainer's dtype: bf16 with torch_ddp)")
    parser.add_argument("--sdpa", default="auto", choices=["auto", "math", "flash"],
                        help="attention kernel (auto: PyTorch's choice)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU")
    parser.add_argument("--reference-repo", type=Path, default=None,
                        help="local Open-Sora v1.1.0 checkout to compare against")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    if args.timer == "cpu":
        if on_gpu:
            parser.error("--timer cpu measures CPU work; use it with --device cpu")
        args.threads = 1
    torch.set_num_threads(args.threads)
    name = args.config or ("STDiT2-XL/2" if on_gpu else "STDiT2-tiny")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_gpu else torch.float32)
    if on_gpu:  # 240x426 video -> 30x53 latents (VAE factor 8)
        sizes = [(16, 30, 53)] if args.quick else [(16, 30, 53), (64, 30, 53)]
        batch = args.batch or 1
    else:  # latent sizes of 128x128 and 144x256 video
        sizes = [(8, 16, 16)] if args.quick else [(8, 16, 16), (16, 18, 32)]
        batch = args.batch or 2
    if args.sizes:
        text = "8x18x32,16x32x32" if args.sizes == "issue" else args.sizes
        try:
            sizes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
        except ValueError:
            parser.error(f"--sizes must look like 16x30x53,64x30x53, got {args.sizes!r}")
        if any(len(size) != 3 for size in sizes):
            parser.error(f"--sizes entries need three numbers FRAMESxHxW, got {args.sizes!r}")
    warmup, repeats = (1, 3) if args.quick else (2, 7)
    if args.timer == "cpu":
        repeats *= 2
    rounds = args.rounds or (3 if args.quick else 5)
    inner = args.inner or max(1, repeats // 2)
    overrides = {k: v for k, v in (("depth", args.depth), ("hidden_size", args.hidden), ("num_heads", args.heads))
                 if v is not None}

    if args.compare_fp32 and (dtype == torch.float32 or args.reference_repo is not None or args.compile):
        parser.error("--compare-fp32 needs --dtype bfloat16 and neither --reference-repo nor --compile")
    torch.manual_seed(0)
    model = build_model(name, grad_checkpointing=args.grad_checkpointing, class_dropout_prob=0.0, **overrides)
    fp32_model = None
    if args.compare_fp32:  # the same weights: perturbed in fp32, then rounded once to the low precision
        fp32_model = model.to(device=device).train()
        randomise_weights(fp32_model)
        model = copy.deepcopy(fp32_model).to(dtype)
    else:
        model = model.to(device=device, dtype=dtype).train()
        randomise_weights(model)
    runner = torch.compile(model) if args.compile else model
    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}.get(args.sdpa)
    attention = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()

    reference = None
    if args.reference_repo is not None:
        module = load_reference_stdit2(args.reference_repo)
        reference = build_reference(module, model).to(device=device, dtype=dtype).train()
        if args.grad_checkpointing:
            module_ckpt = sys.modules["opensora.acceleration.checkpoint"]
            module_ckpt.set_grad_checkpoint(reference)
        legacy = build_model(name, qk_norm_legacy=True, final_layer_legacy=True, class_dropout_prob=0.0, **overrides)
        legacy = legacy.to(device=device, dtype=dtype).eval()
        legacy.load_state_dict(model.state_dict())

    params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    print(f"# {name} (depth {cfg.depth}, hidden {cfg.hidden_size}, heads {cfg.num_heads}): {params / 1e6:.2f}M "
          f"parameters, device={device}, dtype={str(dtype).split('.')[-1]}, batch={batch}, "
          f"threads={torch.get_num_threads()}, grad_checkpointing={args.grad_checkpointing}, "
          f"compile={args.compile}, timer={args.timer}, sdpa={args.sdpa}")
    if reference is not None:
        print(f"# interleaved: {rounds} rounds x {inner} calls per case (min per round when timer=cpu); "
              "figures are median [min-max] over rounds; speed-up = 1.1 time / our time, per round")
    header = f"{'frames x H x W (latent)':>24} {'tokens':>7} {'train s/step':>12} {'tokens/s':>9} {'sample s/step':>13}"
    if on_gpu:
        header += f" {'train MFU':>9} {'sample MFU':>10} {'peak mem':>8}"
    low = str(dtype).split(".")[-1]
    if fp32_model is not None:
        print(f"# interleaved: {rounds} rounds x {inner} calls per case (min per round when timer=cpu); figures are "
              f"median [min-max] over rounds; speed-up = fp32 time / {low} time, per round; error of the {low} "
              "sampling step's output against fp32 on the same inputs")
        header = (f"| latent | tokens | fp32 sample s | {low} sample s | sample speed-up | max abs err | mean abs err "
                  "| mean abs fp32 out |" + ("" if args.sample_only else f" fp32 train s | {low} train s | train speed-up |")
                  + (" autocast train s | autocast speed-up |" if args.autocast and not args.sample_only else ""))
        print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    elif reference is None:
        print(header)
    summary = []
    with attention:
        run_sizes(args, sizes, model, runner, reference, legacy if reference is not None else None, fp32_model,
                  batch, device, warmup, repeats, rounds, inner, on_gpu, summary)
    print(f"SUMMARY {name} on {device} ({str(dtype).split('.')[-1]}, batch {batch}): " + "; ".join(summary))
    return 0


def run_sizes(args, sizes, model, runner, reference, legacy, fp32_model, batch, device, warmup, repeats, rounds,
              inner, on_gpu, summary) -> None:
    low = str(model.dtype).split(".")[-1]
    for frames, lat_h, lat_w in sizes:
        kwargs = make_inputs(model, batch, frames, lat_h, lat_w, device)
        x_mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
        x_mask[0, 0] = False  # one conditioning frame: exercises the t0 modulation path
        kwargs["x_mask"] = x_mask
        flops, tokens = forward_flops(model, batch, frames, lat_h, lat_w)
        label = f"{frames} x {lat_h} x {lat_w}"
        if fp32_model is not None:
            times, error = compare_dtypes(fp32_model, model, kwargs, device, warmup, rounds, inner, args.timer,
                                          args.sample_only, args.autocast)
            sample_x = [f / b for f, b in zip(times["fp32_sample"], times["low_sample"], strict=True)]
            row = (f"| {frames}x{lat_h}x{lat_w} | {tokens} | {spread(times['fp32_sample'])} | "
                   f"{spread(times['low_sample'])} | {spread(sample_x, '.2f')}x | {error['max']:.2e} | "
                   f"{error['mean']:.2e} | {error['scale']:.3f} |")
            text = (f"{frames}x{lat_h}x{lat_w}: sample {spread(sample_x, '.2f')}x, err max {error['max']:.1e} "
                    f"mean {error['mean']:.1e}")
            if not args.sample_only:
                train_x = [f / b for f, b in zip(times["fp32_train"], times["low_train"], strict=True)]
                row += f" {spread(times['fp32_train'])} | {spread(times['low_train'])} | {spread(train_x, '.2f')}x |"
                text += f", train {spread(train_x, '.2f')}x"
            if "autocast_train" in times:
                auto_x = [f / a for f, a in zip(times["fp32_train"], times["autocast_train"], strict=True)]
                row += f" {spread(times['autocast_train'])} | {spread(auto_x, '.2f')}x |"
                text += f", autocast train {spread(auto_x, '.2f')}x"
            print(row, flush=True)
            summary.append(text + f" ({low} vs fp32)")
            continue
        if reference is not None:
            ref_kwargs = reference_kwargs(kwargs)
            with torch.no_grad():
                reference.eval()
                diff = (reference(**ref_kwargs).float() - legacy(**kwargs)).abs().max().item()
                reference.train()
            times = time_interleaved(
                {"train": train_step(runner, kwargs), "ref_train": train_step(reference, ref_kwargs),
                 "sample": sample_step(runner, kwargs), "ref_sample": sample_step(reference, ref_kwargs)},
                device, warmup, rounds, inner, args.timer)
            train_x = [r / o for r, o in zip(times["ref_train"], times["train"], strict=True)]
            sample_x = [r / o for r, o in zip(times["ref_sample"], times["sample"], strict=True)]
            print(f"{label} ({tokens} tokens): max |diff| vs 1.1 (legacy mode) {diff:.2e}\n"
                  f"  train  s/step ours {spread(times['train'])}  1.1 {spread(times['ref_train'])}  "
                  f"speed-up {spread(train_x, '.2f')}x\n"
                  f"  sample s/step ours {spread(times['sample'])}  1.1 {spread(times['ref_sample'])}  "
                  f"speed-up {spread(sample_x, '.2f')}x", flush=True)
            summary.append(f"{frames}x{lat_h}x{lat_w}: train {spread(train_x, '.2f')}x, sample "
                           f"{spread(sample_x, '.2f')}x vs 1.1 (|diff| {diff:.1e})")
            continue
        try:
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
            train_s = time_call(train_step(runner, kwargs), device, warmup, repeats, args.timer)
            sample_s = time_call(sample_step(runner, kwargs), device, warmup, repeats, args.timer)
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(f"{label:>24} {tokens:>7}  out of memory (try --grad-checkpointing or a smaller --batch)")
            summary.append(f"{frames}x{lat_h}x{lat_w}: out of memory")
            continue
        row = f"{label:>24} {tokens:>7} {train_s:>12.4f} {tokens / train_s:>9.0f} {sample_s:>13.4f}"
        if on_gpu:
            row += f" {3 * flops / train_s / args.peak_tflops / 1e12:>9.1%} {flops / sample_s / args.peak_tflops / 1e12:>10.1%}"
            row += f" {torch.cuda.max_memory_allocated(device) / 2**30:>7.1f}G"
        print(row, flush=True)
        summary.append(f"{frames}x{lat_h}x{lat_w}: train {train_s:.3f}s ({tokens / train_s:.0f} tok/s), "
                       f"sample {sample_s:.3f}s")


if __name__ == "__main__":
    raise SystemExit(main())
