"""Media jobs and image variants, against the same library work done bare in this process.

A real ``depot serve`` runs in a subprocess (embedded mode: SQLite, local
storage, jobs in its own worker threads, decoders in warm child processes of
``workers.decoders``). The bench makes its sources itself — a 12-megapixel
JPEG (Pillow), an A4 PDF page holding a photo (Pillow's PDF writer), a 3 s
1080p H.264 video and a ``--transcode-seconds`` 720p H.264 + AAC one (PyAV)
— uploads them, then measures, ``--rounds`` times, alternating sides:

* **thumbnails** (one 256-pixel JPEG) of the JPEG, the PDF's page and the
  video's frame at a tenth of the way in, and a **transcode** of the 720p
  video to MP4 (H.264 + AAC, ``MEDIUM``): the job's own time, from its row
  (``createdAt`` to ``finishedAt``: queue, claim, spooling, the decoder
  process, storing, the record), against the **bare** work: the function
  Depot's decoder process runs (``workers.thumbnails._make``,
  ``workers.transcode._transcode``) called here, in-process — the same
  Pillow, PDFium and PyAV calls with the same options, no job, no child
  process, no storage. Target: job < 1.3x bare;
* an **image variant** (``File.imageUrl``, 256 wide, WebP, of the JPEG): the
  first request (it renders) against ``workers.variants.render`` bare; then
  the cached variant, fetched ``--downloads`` times, against a plain
  ``downloadUrl`` download of the same stored file (same bytes, same route
  machinery). Target: cached >= 0.8x the download's speed;
* and, for scale, what any job costs with no decoder (``verify`` of 1 KB:
  the floor under every job's ratio), and what handing a task to a decoder
  process costs (a task that does nothing, through
  ``workers.decoders.run_isolated``, its child warm).

Run from the repository root: ``.venv/bin/python -m bench.media [--rounds 3]
[--transcode-seconds 30]``. Linux only (the fork server).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import httpx
from PIL import Image

from bench.client import CSRF, REGISTER, Account, data, graphql, multipart, registration
from bench.harness import Stack, depot_env, free_port, progress
from bench.report import GIB, environment, ms, table, times, verdict
from core.settings import Settings
from workers import thumbnails, transcode
from workers.decoders import CHILD_NAME, SERVER_NAME, run_isolated
from workers.images import ImageFormat
from workers.media_limits import MediaLimits
from workers.params import FileId
from workers.variants import ImageFit, VariantSpec, render

EMAIL: Final = "media-bench@example.com"
THUMBNAIL: Final = 256
JOB_TARGET: Final = 1.3
CACHED_TARGET: Final = 0.8
MEMORY_MB: Final = Settings.model_construct().media_memory_limit_mb
# A job's time comes from its row, so a slow poll costs no accuracy; polling every
# 20 ms loaded the very process running the job (+250 ms a thumbnail, measured).
POLL_S: Final = 0.25

UPLOAD = "mutation U($file: Upload!, $path: String) { uploadFile(file: $file, path: $path) { id } }"
START = "mutation S($input: JobInput!) { startJob(input: $input) { id } }"
JOB = "query J($id: ID!) { job(id: $id) { status error createdAt finishedAt } }"
IMAGE_URL = (
    "query V($id: ID!, $w: Int) "
    "{ file(id: $id) { imageUrl(width: $w, fit: CONTAIN, format: WEBP) } }"
)
DERIVATIVES = (
    "query D($id: ID!) "
    "{ file(id: $id) { derivatives(first: 1) { edges { node { downloadUrl } } } } }"
)


# ----------------------------------------------------------------- sources


def photo(path: Path) -> None:
    """4000 x 3000 (12 MP): gradients under noise, which compresses like a photo."""
    size = (4000, 3000)
    gradient = Image.linear_gradient("L").resize(size)
    noise = Image.effect_noise(size, 48)
    Image.merge("RGB", (gradient, noise, gradient.rotate(180))).save(path, "JPEG", quality=90)


def document(path: Path) -> None:
    """One A4 page (595 x 842 pt) holding a photo at 150 dpi."""
    size = (1240, 1754)
    gradient = Image.linear_gradient("L").resize(size)
    page = Image.merge("RGB", (Image.effect_noise(size, 64), gradient, gradient))
    page.save(path, "PDF", resolution=150.0)


def clip(path: Path, seconds: float, size: tuple[int, int], *, sound: bool) -> None:
    """H.264 (+ AAC) in MP4 at 30 fps: a moving gradient, so frames differ."""
    fps = 30
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=48000) if sound else None
        base = Image.linear_gradient("L").resize(size)
        for index in range(int(seconds * fps)):
            shade = base.point(lambda v, i=index: (v + 4 * i) % 256)
            picture = Image.merge("RGB", (shade, base, shade))
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            samples = 1024
            for index in range(int(seconds * 48000 / samples)):
                tone = av.AudioFrame(format="fltp", layout="stereo", samples=samples)
                for plane in tone.planes:
                    plane.update(bytes(samples * 4))
                tone.sample_rate, tone.pts = 48000, index * samples
                tone.time_base = Fraction(1, 48000)
                container.mux(audio.encode(tone))
            container.mux(audio.encode(None))


# ----------------------------------------------------------------- Depot's side


class Depot:
    """The bench account's calls to one ``depot serve``."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def upload(self, path: str, content: bytes) -> str:
        response = self.client.post(
            "/graphql",
            data=multipart(UPLOAD, {"path": path}),
            files={"0": (path.rpartition("/")[2], content, "application/octet-stream")},
            headers=CSRF,
        )
        file_id: str = data(response)["uploadFile"]["id"]
        return file_id

    def job_seconds(self, job_input: dict[str, Any]) -> float:
        """Run a job to its end; its time from its row (``createdAt`` to ``finishedAt``)."""
        job_id = graphql(self.client, START, {"input": job_input})["startJob"]["id"]
        while (job := graphql(self.client, JOB, {"id": job_id})["job"])["finishedAt"] is None:
            time.sleep(POLL_S)
        if job["status"] != "SUCCEEDED":
            raise RuntimeError(f"job {job_input} ended {job['status']}: {job['error']}")
        started = datetime.fromisoformat(job["createdAt"])
        return (datetime.fromisoformat(job["finishedAt"]) - started).total_seconds()

    def get_seconds(self, url: str) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = self.client.get(url)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return seconds, response


# ----------------------------------------------------------------- the bare side


def bare_seconds(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def bare_thumbnail(source: Path, scratch: Path, limits: MediaLimits) -> Callable[[], Any]:
    params = thumbnails.Params(file_id=FileId(uuid.uuid4()), sizes=[THUMBNAIL])
    return functools.partial(thumbnails._make, source, source.name, limits, params, scratch)


def bare_transcode(source: Path, scratch: Path, limits: MediaLimits) -> Callable[[], Any]:
    params = transcode.Params(file_id=FileId(uuid.uuid4()), format=transcode.MediaFormat.MP4)
    out = scratch / "bare.mp4"
    return functools.partial(
        transcode._transcode, source, out, source.name, params, limits, lambda *_: None
    )


def spec(width: int) -> VariantSpec:
    return VariantSpec(width, None, ImageFit.CONTAIN, ImageFormat.WEBP, None)


def decoder_start_seconds(count: int = 10) -> float:
    """The median time ``run_isolated`` takes for a task that does nothing."""

    async def measure() -> list[float]:
        await run_isolated(os.getpid, name="warm-up", seconds=60, setting="-", memory_mb=MEMORY_MB)
        spent = []
        for _ in range(count):
            started = time.perf_counter()
            await run_isolated(
                os.getpid, name="nothing", seconds=60, setting="-", memory_mb=MEMORY_MB
            )
            spent.append(time.perf_counter() - started)
        return spent

    return statistics.median(asyncio.run(measure()))


# ----------------------------------------------------------------- counts, not times


def _children() -> dict[int, tuple[int, int]]:
    """This process's decoder children: pid → (CPU ticks, minor page faults), from /proc."""
    servers = set()
    found: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if name == SERVER_NAME and int(fields[1]) == os.getpid():
            servers.add(int(entry))
        elif name == CHILD_NAME:
            found[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[7]))
    return {pid: (ticks, faults) for pid, (ppid, ticks, faults) in found.items() if ppid in servers}


def _own() -> tuple[float, int]:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime, used.ru_minflt


def counts(sources: dict[str, Path], scratch: Path, limits: MediaLimits, rounds: int) -> str:
    """Each decoding task in a warm decoder child against the same call in this process:
    CPU seconds and minor page faults, which a loaded machine moves far less than time."""
    tick = os.sysconf("SC_CLK_TCK")
    tasks: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {}
    for kind in ("jpeg", "pdf", "video"):
        work = bare_thumbnail(sources[kind], scratch, limits)
        tasks[f"thumbnail: {kind}"] = (work, work)
    source = sources["transcode"]
    params = transcode.Params(file_id=FileId(uuid.uuid4()), format=transcode.MediaFormat.MP4)
    # In a child it reports through the pipe (to nothing here); bare, to nothing.
    reporting = functools.partial(
        transcode._transcode, source, scratch / "child.mp4", source.name, params, limits
    )
    tasks["transcode"] = (reporting, bare_transcode(source, scratch, limits))

    async def ignore(fraction: float, message: str) -> None:
        return None

    async def measure() -> dict[str, list[tuple[float, int, float, int]]]:
        found: dict[str, list[tuple[float, int, float, int]]] = {}
        for round_ in range(rounds + 1):  # the first warms the child
            for label, (isolated, bare) in tasks.items():
                before = _children()
                reports = ignore if label == "transcode" else None
                await run_isolated(
                    isolated,
                    name=label,
                    seconds=3600,
                    setting="-",
                    memory_mb=MEMORY_MB,
                    progress=reports,
                )
                after = _children()
                ticks = sum(t - before.get(pid, (0, 0))[0] for pid, (t, _) in after.items())
                faults = sum(f - before.get(pid, (0, 0))[1] for pid, (_, f) in after.items())
                cpu, own_faults = _own()
                bare()
                cpu_after, own_faults_after = _own()
                if round_:
                    found.setdefault(label, []).append(
                        (ticks / tick, faults, cpu_after - cpu, own_faults_after - own_faults)
                    )
        return found

    rows = [["task", "child CPU", "bare CPU", "child faults", "bare faults"]]
    for label, runs in asyncio.run(measure()).items():
        child_cpu, child_faults, bare_cpu, bare_faults = (
            statistics.mean(run[i] for run in runs) for i in range(4)
        )
        rows.append(
            [label, ms(child_cpu), ms(bare_cpu), f"{child_faults:,.0f}", f"{bare_faults:,.0f}"]
        )
    return "\n".join(
        [
            f"Decoder children against the same calls bare: means of {rounds} round(s) after "
            "a warm-up; CPU from /proc (clock ticks) and getrusage, minor page faults",
            "",
            *table(rows),
        ]
    )


# ----------------------------------------------------------------- the run


def run(rounds: int, transcode_seconds: float, downloads: int, *, count: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="depot-bench-media-") as name:
        workdir = Path(name)
        progress("making the sources…")
        sources = {
            "jpeg": workdir / "photo.jpg",
            "pdf": workdir / "page.pdf",
            "video": workdir / "1080p.mp4",
            "transcode": workdir / "720p.mp4",
        }
        photo(sources["jpeg"])
        document(sources["pdf"])
        clip(sources["video"], 3, (1920, 1080), sound=False)
        clip(sources["transcode"], transcode_seconds, (1280, 720), sound=True)
        limits = MediaLimits.of(Settings.model_construct())
        if count:
            scratch = workdir / "scratch"
            scratch.mkdir()
            return counts(sources, scratch, limits, rounds)
        port = free_port()
        env = depot_env(workdir / "var", workdir / "storage", port)
        env["DEPOT_DEFAULT_QUOTA_BYTES"] = str(4 * GIB)
        stack = Stack(workdir, env, port)
        try:
            stack.start_serve()
            with httpx.Client(base_url=stack.url, timeout=600) as client:
                account = Account.registered(graphql(client, REGISTER, registration(EMAIL)))
                client.headers.update(account.headers)
                figures = measure_all(Depot(client), sources, workdir, limits, rounds, downloads)
        finally:
            stack.stop()
        figures["decoder start"] = ([decoder_start_seconds()], [])
        return report(figures, rounds, transcode_seconds)


Figures = dict[str, tuple[list[float], list[float]]]


def measure_all(
    depot: Depot,
    sources: dict[str, Path],
    workdir: Path,
    limits: MediaLimits,
    rounds: int,
    downloads: int,
) -> Figures:
    """``{label: (Depot's seconds, the baseline's seconds)}``, one pair per round."""
    figures: Figures = {}
    scratch = workdir / "scratch"
    scratch.mkdir()
    contents = {kind: path.read_bytes() for kind, path in sources.items()}
    # One warm-up of everything (the fork server's start, first imports, caches).
    warm = depot.upload("warm/photo.jpg", contents["jpeg"])
    depot.job_seconds({"thumbnails": {"fileId": warm, "sizes": [THUMBNAIL]}})
    bare_thumbnail(sources["jpeg"], scratch, limits)()
    for round_ in range(rounds):
        progress(f"round {round_ + 1} of {rounds}…")
        for kind, label in (
            ("jpeg", "thumbnail: 12 MP JPEG"),
            ("pdf", "thumbnail: PDF page"),
            ("video", "thumbnail: 1080p frame"),
        ):
            file_id = depot.upload(f"r{round_}/{sources[kind].name}", contents[kind])
            job = {"thumbnails": {"fileId": file_id, "sizes": [THUMBNAIL]}}
            bare = bare_thumbnail(sources[kind], scratch, limits)
            _add(figures, label, _alternate(round_, depot, job, bare))
        # What any job costs here, with no decoder: the floor under the ratios above.
        tiny = depot.upload(f"r{round_}/tiny.txt", b"x" * 1024)
        figures.setdefault("job floor: verify 1 KB", ([], []))[0].append(
            depot.job_seconds({"verify": {"fileId": tiny}})
        )
        file_id = depot.upload(f"r{round_}/720p.mp4", contents["transcode"])
        job = {"transcode": {"fileId": file_id, "format": "MP4"}}
        bare = bare_transcode(sources["transcode"], scratch, limits)
        _add(figures, "transcode: 720p to MP4", _alternate(round_, depot, job, bare))
        _variants(
            depot, figures, sources["jpeg"], contents["jpeg"], scratch, limits, round_, downloads
        )
    return figures


def _variants(
    depot: Depot,
    figures: Figures,
    source: Path,
    content: bytes,
    scratch: Path,
    limits: MediaLimits,
    round_: int,
    downloads: int,
) -> None:
    # A width of its own each round, so that the first request renders.
    width = THUMBNAIL + round_
    file_id = depot.upload(f"r{round_}/variant-source.jpg", content)
    url = graphql(depot.client, IMAGE_URL, {"id": file_id, "w": width})["file"]["imageUrl"]
    first, _ = depot.get_seconds(url)
    out = scratch / "bare.webp"
    bare = bare_seconds(lambda: render(source, source.name, limits, spec(width), out))
    _add(figures, "variant: first render", (first, bare))
    # The stored variant itself, as a plain download: the same bytes, the same route machinery.
    [edge] = graphql(depot.client, DERIVATIVES, {"id": file_id})["file"]["derivatives"]["edges"]
    download = edge["node"]["downloadUrl"]
    for _ in range(downloads):
        cached, _ = depot.get_seconds(url)
        plain, _ = depot.get_seconds(download)
        _add(figures, "variant: cached hit", (cached, plain))


def _alternate(
    round_: int, depot: Depot, job: dict[str, Any], bare: Callable[[], Any]
) -> tuple[float, float]:
    """The job and its bare work, the order flipped every other round so drift weighs on both."""
    if round_ % 2:
        bare_s = bare_seconds(bare)
        return depot.job_seconds(job), bare_s
    job_s = depot.job_seconds(job)
    return job_s, bare_seconds(bare)


def _add(figures: Figures, label: str, pair: tuple[float, float]) -> None:
    ours, theirs = figures.setdefault(label, ([], []))
    ours.append(pair[0])
    theirs.append(pair[1])


def report(figures: Figures, rounds: int, transcode_seconds: float) -> str:
    rows = [["work", "Depot", "bare / download", "ratio", "target"]]
    verdicts = []
    for label, (ours, theirs) in figures.items():
        if not theirs:
            rows.append([label, ms(statistics.median(ours)), "", "", ""])
            continue
        depot_s, base_s = statistics.median(ours), statistics.median(theirs)
        if label == "variant: cached hit":
            # Speed relative to a plain download: higher is better.
            ratio, target = base_s / depot_s, f">= {CACHED_TARGET:.1f}x"
            ok = ratio >= CACHED_TARGET
        elif label == "variant: first render":
            ratio, target, ok = depot_s / base_s, "", True
        else:
            ratio, target = depot_s / base_s, f"< {JOB_TARGET:.1f}x"
            ok = ratio < JOB_TARGET
        rows.append([label, ms(depot_s), ms(base_s), times(ratio), target])
        if target:
            verdicts.append(f"{label}: {verdict(ok)}")
    return "\n".join(
        [
            f"Depot media: {rounds} round(s), medians; the transcode's source lasts "
            f"{transcode_seconds:g} s; depot serve embedded (SQLite, local storage)",
            environment("pillow", "pypdfium2", "av"),
            "",
            *table(rows),
            "",
            "jobs: the job's row, createdAt to finishedAt, over the same work bare in this "
            "process; cached variant: a plain download's time over the variant's",
            *verdicts,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measure (3)")
    parser.add_argument(
        "--transcode-seconds",
        type=float,
        default=30,
        help="length of the 720p video transcoded (30; shorter on a slow machine)",
    )
    parser.add_argument(
        "--downloads", type=int, default=20, help="cached-variant and plain downloads a round (20)"
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="no Depot: CPU and page faults of each task in a decoder child against bare",
    )
    args = parser.parse_args(argv)
    print(run(args.rounds, args.transcode_seconds, args.downloads, count=args.counts))


if __name__ == "__main__":
    main()
