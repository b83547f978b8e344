"""Barcode decoder benchmark on synthetic shipping-label frames.

Each case decodes ``--repeat`` different frames (a Code 128 label at a random rotation
and place on noisy cardboard) once each and reports the median and 95th percentile
milliseconds per frame and the share of frames whose label was read. The empty cases
(bare noisy cardboard filling the frame; the example line's emulated camera frame of a
parcel with no label on the belt) report false reads instead. Decoders look for the
controller's default formats (Code 128 + QR code).

    .venv/bin/python bench/decode.py [--repeat N] [--only labels|unreadable]

The unreadable rows (frames past the activity check with no readable code) time zxing
and located-zxing interleaved frame by frame, in turns first, and give located's median
over zxing's, in wall time and in the thread's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.vision import BarcodeDecoder, Symbol  # noqa: E402
from drivers.decoders import DEFAULT_DECODER, available_decoders, make_decoder  # noqa: E402
from drivers.decoders.synth import cardboard, paste, render  # noqa: E402
from tests.test_decode_budget import unreadable_frames  # noqa: E402

TEXT = "1Z999AA10123456784"
FORMATS = ("code128", "qrcode")
EXAMPLE_CONFIG = ROOT / "deploy" / "line.example.toml"


def label_frames(
    height: int, width: int, count: int, seed: int, *, with_label: bool = True
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    code = render(TEXT, "code128", module_px=2, bar_height=80)
    margin = 300
    frames = []
    for _ in range(count):
        frame = cardboard(height, width, rng)
        if with_label:
            cx = rng.uniform(margin, width - margin)
            cy = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
            frame = paste(frame, code, cx, cy, rng.uniform(0, 360), rng=rng)
        frames.append(frame)
    return frames


def parcel_frames(count: int, seed: int) -> list[np.ndarray]:
    """The example line's camera frames of one label-less parcel on the belt."""
    from controller.config import load_config
    from sim_hardware.render import FrameRenderer, ParcelTop

    cam = load_config(EXAMPLE_CONFIG).cameras[0]
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=seed + i)
        parcel = ParcelTop(lead_x_mm=cam.position_mm + float(rng.uniform(100, 400)),
                           length_mm=float(rng.uniform(250, 600)),
                           width_mm=float(rng.uniform(180, 380)), y_mm=0.0,
                           shade=int(rng.integers(125, 185)), labels=())
        frames.append(renderer.render(cam.view_start_mm, [parcel]))
    return frames


def run_case(decoder: BarcodeDecoder, frames: list[np.ndarray]) -> tuple[float, float, int]:
    """Median ms, p95 ms and number of frames where TEXT was read (or anything, if empty)."""
    decoder.decode(frames[0])  # warm-up: imports, per-thread detector
    times = []
    hits = 0
    for frame in frames:
        t0 = time.perf_counter()
        symbols = decoder.decode(frame)
        times.append((time.perf_counter() - t0) * 1000)
        hits += any(s.text == TEXT for s in symbols)
    return float(np.median(times)), float(np.percentile(times, 95)), hits


def false_reads(decoder: BarcodeDecoder, frames: list[np.ndarray]) -> tuple[float, float, int]:
    decoder.decode(frames[0])
    times = []
    reads = 0
    for frame in frames:
        t0 = time.perf_counter()
        reads += len(decoder.decode(frame))
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95)), reads


def throughput(decoder: BarcodeDecoder, frames: list[np.ndarray], threads: int) -> float:
    work = frames * max(1, 60 // len(frames))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decoder.decode, frames[:threads]))  # warm-up each thread
        t0 = time.perf_counter()
        list(pool.map(decoder.decode, work))
        return len(work) / (time.perf_counter() - t0)


_WORKER_DECODER: list[BarcodeDecoder] = []


def _start_worker(name: str) -> None:
    """Build the decoder once in a pool process."""
    _WORKER_DECODER.append(make_decoder(name, FORMATS))


def _decode_in_worker(frame: np.ndarray) -> list[Symbol]:
    return _WORKER_DECODER[0].decode(frame)


def process_throughput(name: str, frames: list[np.ndarray], processes: int) -> float:
    """Frames/s through a process pool; each frame is pickled to a worker, as the
    controller would have to send it."""
    work = frames * max(1, 60 // len(frames))
    with ProcessPoolExecutor(processes, initializer=_start_worker, initargs=(name,)) as pool:
        list(pool.map(_decode_in_worker, frames[: 2 * processes]))  # warm-up
        t0 = time.perf_counter()
        list(pool.map(_decode_in_worker, work))
        return len(work) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="frames per case (default 30)")
    parser.add_argument("--only", choices=("labels", "unreadable"),
                        help="only the label and empty rows, or only the unreadable rows")
    args = parser.parse_args()
    n = max(1, args.repeat)

    names = available_decoders()
    decoders = {name: make_decoder(name, FORMATS) for name in names}
    sizes = [(720, 1280), (1080, 1920), (2048, 2448)]
    print(f"decoders: {', '.join(names)}; formats {FORMATS}; {n} frames per case")
    if args.only != "unreadable":
        label_rows(decoders, sizes, n)
    if args.only != "labels":
        unreadable_rows(decoders, n)
    if args.only is None:
        pool_rows(n)


def label_rows(decoders: dict[str, BarcodeDecoder], sizes: list[tuple[int, int]],
               n: int) -> None:
    print(f"{'decoder':<16}{'frame':<12}{'median ms':>10}{'p95 ms':>9}{'read':>10}")
    for h, w in sizes:
        frames = label_frames(h, w, n, seed=w)
        for name, decoder in decoders.items():
            med, p95, hits = run_case(decoder, frames)
            print(f"{name:<16}{f'{w}x{h}':<12}{med:>10.1f}{p95:>9.1f}{f'{hits}/{n}':>10}")
    empty = label_frames(1080, 1920, n, seed=7, with_label=False)
    for name, decoder in decoders.items():
        med, p95, reads = false_reads(decoder, empty)
        print(f"{name:<16}{'1920x1080 empty':<16}{med:>6.1f}{p95:>9.1f}{f'{reads} false':>10}")
    bare = parcel_frames(n, seed=11)
    for name, decoder in decoders.items():
        med, p95, reads = false_reads(decoder, bare)
        print(f"{name:<16}{'1920x1080 parcel':<16}{med:>6.1f}{p95:>9.1f}{f'{reads} false':>10}")


def unreadable_rows(decoders: dict[str, BarcodeDecoder], n: int) -> None:
    """Frames past the activity check with no readable code: located must not cost more
    than plain whole-image zxing-cpp (the two interleaved frame by frame)."""
    pair = [decoders[k] for k in ("zxing", "located-zxing") if k in decoders]
    print(f"{'decoder':<16}{'frame':<22}{'median ms':>10}{'p95 ms':>9}{'cpu ms':>8}"
          f"{'reads':>9}")
    for kind in ("destroyed", "several", "glare", "print", "busy"):
        frames = unreadable_frames(kind, n, seed=31)
        for d in pair:
            d.decode(frames[0])
        times: list[list[float]] = [[] for _ in pair]
        cpu: list[list[float]] = [[] for _ in pair]
        counts = [0 for _ in pair]
        for i, frame in enumerate(frames):
            order = list(enumerate(pair))
            for k, d in order[::-1] if i % 2 else order:
                t0, c0 = time.perf_counter(), time.thread_time()
                counts[k] += len(d.decode(frame))
                cpu[k].append((time.thread_time() - c0) * 1000)
                times[k].append((time.perf_counter() - t0) * 1000)
        for d, ts, cs, r in zip(pair, times, cpu, counts, strict=True):
            print(f"{d.name:<16}{f'1920x1080 {kind}':<22}{float(np.median(ts)):>10.1f}"
                  f"{float(np.percentile(ts, 95)):>9.1f}{float(np.median(cs)):>8.1f}"
                  f"{f'{r} false':>9}")
        if len(pair) == 2:
            wall = float(np.median(times[1])) / float(np.median(times[0]))
            per_cpu = float(np.median(cpu[1])) / float(np.median(cpu[0]))
            print(f"{'  located/zxing':<38}{wall:>6.2f}x{'':>10}{per_cpu:>6.2f}x")


def pool_rows(n: int) -> None:
    default = make_decoder(DEFAULT_DECODER, FORMATS)
    crops = label_frames(600, 600, n, seed=600)
    med, p95, hits = run_case(default, crops)
    print(f"{DEFAULT_DECODER:<16}{'600x600':<12}{med:>10.1f}{p95:>9.1f}{f'{hits}/{n}':>10}")

    frames = label_frames(1080, 1920, min(n, 20), seed=1080)
    one = throughput(default, frames, 1)
    two = throughput(default, frames, 2)
    print(
        f"{DEFAULT_DECODER} 1920x1080 thread pool: 1 thread {one:.0f} frames/s, "
        f"2 threads {two:.0f} frames/s ({two / one:.2f}x)"
    )
    procs = process_throughput(DEFAULT_DECODER, frames, 2)
    print(
        f"{DEFAULT_DECODER} 1920x1080 process pool: 2 processes {procs:.0f} frames/s "
        f"({procs / one:.2f}x one thread), frames pickled to the workers"
    )


if __name__ == "__main__":
    main()
