"""Reader app under load: N raters answering at once against a real server on loopback.

Data flow: a synthetic pair set (random 8-bit composites, written here in a second; the app
reads only ``pairs.json`` and the images) -> ``medlossy reader serve`` in its own process on
127.0.0.1 -> one client process with N concurrent raters (httpx, asyncio), each, per pair,
one GET of its rating page and of that page's image and one POST of an answer, all raters
released at the same instant -> latency percentiles of the POSTs and of the GETs (page plus
image), the server's CPU time per answer (page + image + POST; other load does not change
it), the number of answers in the database, and the load average before the run.
Loopback only: nothing leaves the machine.

    .venv/bin/python bench/reader_load.py [--raters 50] [--pairs 30] [--burst] [--out x.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
_FIELD = re.compile(r'name="(\w+)" value="([^"]*)"')
_LINK = re.compile(r"rater\d+: (http://\S+)")


def make_study(folder: Path, pairs: int, seed: int = 0) -> None:
    """The files ``reader serve`` needs: pairs.json and one 256 x 524 grey PNG per pair."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    ids = [uuid.UUID(int=int(rng.integers(2**62)) << 64 | i).hex for i in range(pairs)]
    for pair_id in ids:
        image = rng.integers(0, 256, (256, 524), dtype=np.uint8)
        Image.fromarray(image, mode="L").save(folder / "images" / f"{pair_id}.png",
                                              compress_level=0)
    manifest = {"format_version": 1,
                "pairs": [{"id": i, "image": f"images/{i}.png"} for i in ids]}
    (folder / "pairs.json").write_text(json.dumps(manifest))


def start_server(study: Path, port: int, raters: int) -> tuple[subprocess.Popen, list[str]]:
    command = [sys.executable, "-m", "medlossy.cli.main", "reader", "serve", str(study),
               "--port", str(port), "--raters", str(raters)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    links: list[str] = []
    while len(links) < raters:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the server exited before printing its links")
        match = _LINK.search(line)
        if match:
            links.append(match.group(1))
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/favicon.ico", timeout=1)
            return process, links
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def rater(client: httpx.AsyncClient, link: str, pairs: int, start: asyncio.Event,
                burst: asyncio.Barrier | None, posts: list[float], gets: list[float],
                failures: list[str]) -> None:
    path = httpx.URL(link).path  # /r/TOKEN
    await start.wait()
    for position in range(1, pairs + 1):
        began = time.perf_counter()
        page = await client.get(f"{path}/p/{position}")
        form = dict(_FIELD.findall(page.text.split('id="answer-form"')[1].split("</form>")[0]))
        image = re.search(r'<img id="pair" src="([^"]+)"', page.text).group(1)
        await client.get(image)
        gets.append(time.perf_counter() - began)
        form["answer"] = ("left", "right", "undecided")[position % 3]
        if burst is not None:
            await burst.wait()
        began = time.perf_counter()
        response = await client.post(f"{path}/answer", data=form)
        posts.append(time.perf_counter() - began)
        if response.status_code != 303:
            failures.append(f"{response.status_code}")


async def load(base: str, links: list[str], pairs: int, burst: bool) -> dict:
    posts: list[float] = []
    gets: list[float] = []
    failures: list[str] = []
    start = asyncio.Event()
    barrier = asyncio.Barrier(len(links)) if burst else None
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=base, timeout=60, limits=limits) for _ in links]
    tasks = [asyncio.create_task(rater(c, link, pairs, start, barrier, posts, gets, failures))
             for c, link in zip(clients, links, strict=True)]
    await asyncio.sleep(0.2)
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - began
    for client in clients:
        await client.aclose()

    def stats(values: list[float]) -> dict:
        array = np.array(values) * 1000
        return {"n": len(values), "p50_ms": float(np.percentile(array, 50)),
                "p95_ms": float(np.percentile(array, 95)),
                "p99_ms": float(np.percentile(array, 99)), "max_ms": float(array.max())}

    return {"seconds": seconds, "answers_per_s": len(posts) / seconds, "post": stats(posts),
            "get": stats(gets), "failures": len(failures)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), load-independent."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commit() -> str:
    result = subprocess.run(["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--burst", action="store_true",
                        help="every rater POSTs at the same instant (a barrier before each POST)")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        study = Path(temporary) / "rs"
        make_study(study, arguments.pairs)
        load_before = os.getloadavg()
        process, links = start_server(study, arguments.port, arguments.raters)
        try:
            cpu_before = cpu_seconds(process.pid)
            result = asyncio.run(load(f"http://127.0.0.1:{arguments.port}", links,
                                      arguments.pairs, arguments.burst))
            result["server_cpu_ms_per_answer"] = (cpu_seconds(process.pid) - cpu_before) \
                * 1000 / (arguments.raters * arguments.pairs)
        finally:
            process.terminate()
            process.wait(timeout=20)
        stored = sqlite3.connect(study / "answers.sqlite").execute(
            "SELECT COUNT(*) FROM answers").fetchone()[0]
    result |= {"label": arguments.label, "commit": commit(), "raters": arguments.raters,
               "pairs": arguments.pairs, "burst": arguments.burst, "answers_stored": stored,
               "load_average_before": [round(x, 2) for x in load_before],
               "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
