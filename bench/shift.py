"""Benchmark of long shifts on the virtual clock: wall time, CPU per parcel, peak memory by size.

Run: ``.venv/bin/python bench/shift.py`` (about 25 minutes on the 2-core machine; ``--parcels``,
``--truth``, ``--repeat``, ``--frames`` to change what runs).

1. Shifts of the demo mix (the exceptions included) on the example line, virtual clock, each
   in a process of its own so that its peak memory is its own: ``--parcels`` sizes with real
   rendering and real decoding, ``--truth`` sizes with truth frames
   (:mod:`sim_hardware.truth_frames`: the emulator neither renders nor decodes, it hands the
   controller the labels in view as read). Every size has the same order book (``--book``,
   by default as many orders as the largest shift has parcels: the shift's own, filled up
   with earlier days' released orders), as a site's book does not grow with the length of a
   shift, so the controller's order cache is warmed to the same size at every size. Each
   row: wall time, process CPU per parcel, frames decoded per parcel, peak resident memory
   and how much of it the shift added to the process it started in (libraries loaded and
   the config read); "differ" counts the parcels whose outcome differs from the emulator's
   truth and "missort" those in a bin their plan does not allow, as :mod:`controller.kpis`
   judges them. Neither side is held in memory: the emulator generates each parcel as the
   line reaches it and spills its truth to a file once it settles, the controller writes
   its journal, and the two files are joined row by row once the figures are taken
   (:mod:`shift_truth`; ``--shown`` prints the first that differ). A size run both ways shows
   what truth frames skip: the difference of the CPU per parcel is rendering and decoding.
   ``--growth SMALL LARGE`` instead traces where memory is held at the end of two truth
   shifts (tracemalloc by line, ``--depth`` for the project's callers of each line).
2. Frames the emulator renders for the example camera with one parcel in view; for every
   decoder available, the median and p95 milliseconds to decode the whole frame and the
   parcel's crop (which is what the controller decodes), and the read rate.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.process_memory import peak_rss_mb, rss_mb  # noqa: E402
from bench.shift_truth import TruthSpill, check_journal  # noqa: E402
from controller.app.simulate import FrameMode, ShiftResult, run_shift  # noqa: E402
from controller.clock import VirtualClock, run_virtual  # noqa: E402
from controller.config import LineConfig, load_config  # noqa: E402
from drivers.decoders import available_decoders, make_decoder  # noqa: E402
from sim_hardware.labels import LabelSpec  # noqa: E402
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel  # noqa: E402
from sim_hardware.scenario import DEMO_MIX, ScenarioSpec, make_code  # noqa: E402

CONFIG = ROOT / "deploy" / "line.example.toml"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def one_shift(parcels: int, frames: FrameMode, seed: int, *,
              snapshot: Path | None = None, depth: int = 1,
              book: int = 0) -> dict[str, Any]:
    """One shift in this process: its figures (run by the parent in a child of its own).

    With ``snapshot``, tracemalloc traces the shift and its snapshot, taken when the shift
    ended with its result still held, is dumped there (the figures are then slower). The
    emulator holds no truth: it is spilled to a file as each parcel settles, and the journal
    is held against it after the figures are taken (:mod:`shift_truth`).
    """
    if snapshot is not None:
        tracemalloc.start(depth)
    config = load_config(CONFIG)
    spec = ScenarioSpec(parcels=parcels, seed=seed, mix=DEMO_MIX, order_book=book)
    with tempfile.TemporaryDirectory() as tmp:
        spill = TruthSpill(Path(tmp) / "truth.sqlite")

        async def shift(clock: VirtualClock) -> ShiftResult:
            return await run_shift(config, spec, Path(tmp), clock, frames=frames,
                                   journal_readback=False, truth_sink=spill)

        rss_before = rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_virtual(shift)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak_rss = peak_rss_mb()
        traced_peak_mb = 0.0
        if snapshot is not None:
            gc.collect()  # what is held, not the cycles the collector has yet to free
            traced_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.take_snapshot().dump(str(snapshot))
            tracemalloc.stop()
        spill.close()
        if spill.parcels != parcels:
            raise RuntimeError(f"{spill.parcels} parcels' truth spilled of {parcels}")
        check = check_journal(Path(tmp) / "journal.sqlite", spill.path)
    return {"parcels": parcels, "frames": frames, "wall_s": wall, "cpu_s": cpu,
            "decoded": result.stats.frames_decoded, "differs": check.differs,
            "missorts": check.missorts, "untracked": check.untracked,
            "phantoms": check.phantoms, "still_open": check.still_open,
            "kinds": dict(check.kinds), "examples": check.examples,
            "off_bins": check.off_bins, "off_kinds": dict(check.off_kinds),
            "line_time_s": result.line_time_s, "traced_peak_mb": traced_peak_mb,
            "peak_rss_mb": peak_rss, "grown_mb": peak_rss - rss_before}


def shift_in_child(parcels: int, frames: FrameMode, seed: int, *,
                   snapshot: Path | None = None, depth: int = 1,
                   book: int = 0) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", str(parcels), "--mode", frames,
               "--seed", str(seed), "--book", str(book)]
    if snapshot is not None:
        command += ["--snapshot", str(snapshot), "--depth", str(depth)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def bench_growth(small: int, large: int, top: int, depth: int = 1) -> None:
    """Where memory grows with the shift: tracemalloc by line, truth-frame shifts of two sizes.

    Each shift runs traced in a child of its own; its snapshot is taken at the shift's end
    with its result still held (the emulator spills its truth as the parcels settle, the
    journal is not read back). A line's growth divided by the parcels between the sizes is
    what it keeps per parcel.
    """
    with tempfile.TemporaryDirectory() as tmp:
        snaps, rows = [], []
        for parcels in (small, large):
            path = Path(tmp) / f"{parcels}.snap"
            rows.append(shift_in_child(parcels, "truth", 100, snapshot=path, depth=depth,
                                       book=large))
            snaps.append(tracemalloc.Snapshot.load(str(path)))
    extra = large - small
    print(f"memory growth {small} -> {large} truth-frame parcels (tracemalloc, by line, "
          f"held at the shift's end):")
    total = sum(s.size for s in snaps[1].traces) - sum(s.size for s in snaps[0].traces)
    print(f"  traced total {total / extra:,.0f} B/parcel; peak traced "
          f"{rows[0]['traced_peak_mb']:.1f} -> {rows[1]['traced_peak_mb']:.1f} MB, "
          f"peak RSS {rows[0]['peak_rss_mb']:.0f} -> {rows[1]['peak_rss_mb']:.0f} MB")
    print(f"  {'B/parcel':>9} {'blocks/parcel':>14}  line" + (
        "  <- the project's callers" if depth > 1 else ""))
    small_by, large_by = (_by_site(snap, depth) for snap in snaps)
    grown = sorted(((size - small_by.get(key, (0, 0))[0], count - small_by.get(key, (0, 0))[1],
                     key) for key, (size, count) in large_by.items()), reverse=True)
    for size, count, where in grown[:top]:
        print(f"  {size / extra:>9,.0f} {count / extra:>14.2f}  {where}", flush=True)


def _by_site(snapshot: tracemalloc.Snapshot, depth: int) -> dict[str, tuple[int, int]]:
    """Traced bytes and blocks by allocating line, with depth the project's callers too."""
    sites: dict[str, tuple[int, int]] = {}
    for trace in snapshot.traces:
        frames = list(reversed(trace.traceback))  # innermost first
        names = [f"{_short(f.filename)}:{f.lineno}" for f in frames]
        callers = [n for f, n in zip(frames[1:], names[1:], strict=True)
                   if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename]
        key = " <- ".join([names[0], *callers[:2]])
        size, count = sites.get(key, (0, 0))
        sites[key] = (size + trace.size, count + 1)
    return sites


def _short(filename: str) -> str:
    return filename.removeprefix(f"{ROOT}/").split("/lib/python3.11/")[-1]


def bench_shifts(runs: list[tuple[int, FrameMode]], repeat: int, book: int,
                 shown: int) -> None:
    print("shift, example line, demo mix, virtual clock; each in a process of its own "
          "(median of the repeats):", flush=True)
    print(f"  the order book holds {book:,} orders at every size (the shift's and earlier "
          "days' released orders: a site's book does not grow with the shift), so the "
          "controller's order cache is the same at every size", flush=True)
    print(f"  {'parcels':>8} {'frames':<9}{'wall s':>9}{'CPU ms/parcel':>15}"
          f"{'decoded/parcel':>16}{'peak RSS MB':>13}{'grown MB':>10}{'differ':>8}"
          f"{'missort':>9}", flush=True)
    for parcels, frames in runs:
        rows = [shift_in_child(parcels, frames, 100 + i, book=book) for i in range(repeat)]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return float(statistics.median(r[key] for r in rows))

        print(f"  {parcels:>8} {frames:<9}{med('wall_s'):>9.1f}"
              f"{med('cpu_s') / parcels * 1000:>15.1f}{med('decoded') / parcels:>16.2f}"
              f"{med('peak_rss_mb'):>13.0f}{med('grown_mb'):>10.0f}"
              f"{max(r['differs'] for r in rows):>8}{max(r['missorts'] for r in rows):>9}",
              flush=True)
        for row in rows:
            show_differences(row, shown)


def show_differences(row: dict[str, Any], shown: int) -> None:
    """How the parcels that differ from the truth differ, and the first few of them."""
    if row["off_bins"]:
        print(f"    not in an expected bin (the END when none; a coarser test than the KPIs', "
              f"which allow a full bin's parcel at the END): {row['off_bins']} "
              f"{row['off_kinds']}", flush=True)
    if not row["kinds"] or not shown:
        return
    print(f"    differing from the truth: {row['kinds']}", flush=True)
    for example in row["examples"][:shown]:
        print(f"      {json.dumps(example)}", flush=True)


def bench_decoders(config: LineConfig, frames: int) -> None:
    cam = config.cameras[0]
    renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=5)
    rng = random.Random(5)
    samples = []
    for i in range(frames):
        code = make_code(500_000 + i)
        length, width = rng.uniform(250, 600), rng.uniform(180, 380)
        label = PlacedLabel(LabelSpec(code, qr_text=code if i % 3 == 0 else None, seed=i),
                            rng.uniform(-30, 30), rng.uniform(-20, 20), rng.uniform(0, 360))
        lead = cam.position_mm + length / 2 + rng.uniform(-100, 100)
        top = ParcelTop(lead, length, width, rng.uniform(-20, 20), rng.randrange(125, 185),
                        (label,))
        image = renderer.render(cam.view_start_mm, [top])
        lo = max(0, int((lead - length - 15 - cam.view_start_mm) / cam.mm_per_px))
        hi = min(image.shape[1], int((lead + 15 - cam.view_start_mm) / cam.mm_per_px) + 1)
        samples.append((code, image, image[:, lo:hi]))
    print(f"decode ms per frame, example camera {cam.resolution[0]}x{cam.resolution[1]}, "
          f"one parcel in view, label at a random angle, {frames} frames, one thread:")
    print(f"  {'decoder':<16}{'input':<22}{'median':>8}{'p95':>8}{'read':>10}")
    for name in available_decoders():
        decoder = make_decoder(name)
        for kind, index in (("whole frame", 1), ("parcel crop", 2)):
            times, reads = [], 0
            for code, frame, crop in samples:
                image = frame if index == 1 else crop
                start = time.perf_counter()
                symbols = decoder.decode(image)
                times.append((time.perf_counter() - start) * 1000)
                reads += any(s.text == code and s.symbology == "code128" for s in symbols)
            shape = f"{kind} {image.shape[1]}x{image.shape[0]}" if kind == "whole frame" \
                else kind
            print(f"  {name:<16}{shape:<22}{statistics.median(times):>8.1f}"
                  f"{p95(times):>8.1f}{reads:>6}/{len(samples)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, nargs="*", default=[1000, 10000],
                        help="shift sizes rendered and decoded (default: 1000 10000)")
    parser.add_argument("--truth", type=int, nargs="*", default=[1000, 10000, 100000],
                        help="shift sizes with truth frames (default: 1000 10000 100000)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--frames", type=int, default=40,
                        help="frames for the decoder table (0: no table)")
    parser.add_argument("--growth", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="only where memory grows: tracemalloc by line between "
                             "truth-frame shifts of these sizes")
    parser.add_argument("--top", type=int, default=25, help="lines for --growth")
    parser.add_argument("--depth", type=int, default=1,
                        help="frames traced for --growth: above 1, each line's callers in "
                             "the project too (slower)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("rendered", "truth"), default="rendered",
                        help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--book", type=int, default=0,
                        help="orders in the book at every size (default: the largest shift's "
                             "parcels)")
    parser.add_argument("--shown", type=int, default=5,
                        help="parcels shown of each shift's that differ from the truth")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_shift(args.one, args.mode, args.seed, snapshot=args.snapshot,
                                   depth=args.depth, book=args.book)))
        return
    if args.growth:
        bench_growth(args.growth[0], args.growth[1], args.top, args.depth)
        return
    runs: list[tuple[int, FrameMode]] = [(n, "rendered") for n in args.parcels]
    runs += [(n, "truth") for n in args.truth]
    bench_shifts(runs, args.repeat, args.book or max(n for n, _ in runs), args.shown)
    if args.frames:
        bench_decoders(load_config(CONFIG), args.frames)


if __name__ == "__main__":
    main()
