"""Bridge: how fast the feed goes to NATS JetStream, and how soon an edge's viewers see a write.

PostgreSQL (``STUDYPUB_BENCH_PG_URL``) and the NATS server at ``STUDYPUB_BENCH_NATS_URL``
(default ``nats://127.0.0.1:4222``, JetStream enabled).

1. Throughput. 200,000 entries are seeded in ``studypub_bench_bridge``. In a process of its
   own, the bridge (``studypub.bridge.Bridge``) publishes them all to a fresh stream, timed
   from its start to the last ack. The limit, in another process: a raw nats-py loop
   publishing the same messages (the same subjects, bodies and headers, read from the
   database before the clock starts) with the same pipelining (``publish_async``, acks
   awaited per batch of 1,000). The two alternate, three rounds each; the best of each
   counts. Target: the bridge at >= 0.7 of the raw loop.
2. Latency. ``studypub serve`` (the origin, with its relay), ``studypub bridge`` and
   ``studypub serve --edge`` each in a process of its own; SSE clients follow the edge from
   a client process (``bench/fanout.py``'s); 20 writes one second apart through the origin's
   authoring API; latency from each write's HTTP response to its entry's arrival at each
   client. Target: p99 < 50 ms.

The last line is one JSON object.

    python bench/bridge.py [--entries 200000] [--rounds 3] [--clients 100] [--writes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fanout
import httpx
import nats
from benchdb import create_database, database_url, drop_database, free_port
from feed import seed

from studypub import bridge, store
from studypub.db import create_engine, read_session_factory

DB_NAME = "studypub_bench_bridge"
NATS_URL = os.environ.get("STUDYPUB_BENCH_NATS_URL", "nats://127.0.0.1:4222")
BATCH = 1000
TARGET_RATIO = 0.7
TOKEN = fanout.TOKEN  # the origin's author token, and every server's service token
HOST = "127.0.0.1"


# ---------------------------------------------------------------- the publishers (children)


async def publish_bridge(url: str, prefix: str) -> dict[str, float]:
    """The bridge, from its start until the feed's last entry is acknowledged."""
    engine = create_engine(url)
    try:
        async with read_session_factory(engine)() as session:
            head = await store.read_head(session)
        worker = bridge.Bridge(engine, NATS_URL, prefix=prefix, batch=BATCH)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        while worker.stats.bridged_seq < head.last_seq:
            if task.done():
                task.result()
                raise SystemExit("the bridge stopped")
            await asyncio.sleep(0.002)
        seconds = time.perf_counter() - started
        stop.set()
        await task
        return {"events": worker.stats.published, "seconds": seconds}
    finally:
        await engine.dispose()


async def publish_raw(url: str, prefix: str) -> dict[str, float]:
    """The same messages from memory: a plain nats-py loop, the same pipelining."""
    engine = create_engine(url)
    try:
        async with read_session_factory(engine)() as session:
            head = await store.read_head(session)
            messages, after = [], 0
            while rows := await store.read_entries(
                session, after_seq=after, limit=BATCH, kinds=None, raw_payload=True
            ):
                messages += [bridge.message_of(prefix, head.epoch, row) for row in rows]
                after = rows[-1].seq
    finally:
        await engine.dispose()
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        await js.add_stream(bridge.stream_config(prefix, head.epoch))
        started = time.perf_counter()
        for first in range(0, len(messages), BATCH):
            acks = [
                await js.publish_async(subject, body, headers=headers)
                for subject, body, headers in messages[first : first + BATCH]
            ]
            await asyncio.gather(*acks)
        seconds = time.perf_counter() - started
    finally:
        await nc.close()
    return {"events": len(messages), "seconds": seconds}


async def run_child(mode: str, prefix: str) -> dict[str, float]:
    """One publisher in a process of its own (this script with ``--publish``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--publish",
        mode,
        prefix,
        stdout=subprocess.PIPE,
        env=dict(os.environ, STUDYPUB_BENCH_DB_URL=database_url(DB_NAME)),
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} publisher failed")
    figures: dict[str, float] = json.loads(out.decode().splitlines()[-1])
    return figures


async def forget(prefix: str) -> None:
    """Delete the streams and bucket of ``prefix``."""
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name.startswith(prefix.upper() + "_"):
                await js.delete_stream(info.config.name)
        with contextlib.suppress(Exception):
            await js.delete_key_value(bridge.head_bucket(prefix))
    finally:
        await nc.close()


async def throughput(rounds: int) -> dict[str, Any]:
    best: dict[str, float] = {}
    for n in range(rounds):
        for mode in ("raw", "bridge"):
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            try:
                figures = await run_child(mode, prefix)
            finally:
                await forget(prefix)
            rate = figures["events"] / figures["seconds"]
            print(
                f"round {n + 1} {mode:>6}: {figures['events']:.0f} in "
                f"{figures['seconds']:.2f} s, {rate:,.0f} events/s",
                flush=True,
            )
            best[mode] = max(best.get(mode, 0.0), rate)
    return {
        "bridge_events_per_s": round(best["bridge"]),
        "raw_events_per_s": round(best["raw"]),
        "ratio": round(best["bridge"] / best["raw"], 3),
    }


# ---------------------------------------------------------------- the edge's latency


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``studypub <args>`` in a process of its own for the block."""
    studypub = Path(sys.executable).parent / "studypub"
    proc = subprocess.Popen(
        [str(studypub), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def answering(base: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``base`` answers a feed page (an edge: once its stream is loaded)."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for _ in range(1200):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{base}/v1/feed?limit=1")).status_code == 200:
                    return
            if proc.poll() is not None:
                raise SystemExit(f"a server failed: {proc.communicate()[1].decode()}")
            await asyncio.sleep(0.05)
    raise SystemExit(f"{base} did not answer")


async def edge_latency(url: str, clients: int, writes: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        STUDYPUB_DATABASE_URL=url,
        STUDYPUB_AUTHOR_TOKEN=TOKEN,
        STUDYPUB_VIEWER_TOKEN=TOKEN,
        STUDYPUB_NATS_URL=NATS_URL,
        STUDYPUB_NATS_PREFIX=prefix,
    )
    origin_port, edge_port = free_port(), free_port()
    origin = f"http://{HOST}:{origin_port}"
    edge = f"http://{HOST}:{edge_port}"
    try:
        with (
            process(["serve", "--port", str(origin_port)], env) as origin_proc,
            process(["bridge"], env),
            process(["serve", "--edge", "--port", str(edge_port)], env) as edge_proc,
        ):
            await answering(origin, origin_proc)
            await answering(edge, edge_proc)
            # The edge answers once it loaded what the stream held when it began; the clients
            # start when it holds the whole feed (the bridge publishes it first).
            since = await fanout.head_cursor(origin)
            for _ in range(600):
                if await fanout.head_cursor(edge) == since:
                    break
                await asyncio.sleep(0.5)
            on_edge = await fanout.spawn_clients("sse", clients, edge_port, since)
            on_origin = await fanout.spawn_clients("sse", clients, origin_port, since)
            await asyncio.sleep(2)
            written = await fanout.write_markers(origin, writes)
            await asyncio.sleep(3)
            figures = latency("edge", *await fanout.collect(on_edge), written, clients)
            figures |= latency("origin", *await fanout.collect(on_origin), written, clients)
    finally:
        await forget(prefix)
    return figures


def latency(
    where: str,
    arrivals: dict[int, list[float]],
    duplicates: int,
    _errors: int,
    written: dict[int, float],
    clients: int,
) -> dict[str, Any]:
    """Delivery latency from each write's response to each client's arrival."""
    latencies = [
        (at - written[n]) * 1000 for n, times in arrivals.items() if n in written for at in times
    ]
    figures = {
        f"{where}_p50_ms": round(statistics.median(latencies), 1),
        f"{where}_p99_ms": round(statistics.quantiles(latencies, n=100)[98], 1),
        f"{where}_max_ms": round(max(latencies), 1),
        f"{where}_missed": clients * len(written) - len(latencies),
        f"{where}_duplicates": duplicates,
    }
    print(
        f"write -> {where} SSE x {clients}: p50 {figures[f'{where}_p50_ms']} ms, p99 "
        f"{figures[f'{where}_p99_ms']} ms, max {figures[f'{where}_max_ms']} ms, missed "
        f"{figures[f'{where}_missed']}, dup {duplicates}",
        flush=True,
    )
    return figures


async def main(args: argparse.Namespace) -> dict[str, Any]:
    await create_database(DB_NAME)
    url = database_url(DB_NAME)
    engine = create_engine(url)
    try:
        await seed(engine, args.entries)
        await engine.dispose()
        figures = await throughput(args.rounds)
        figures |= await edge_latency(url, args.clients, args.writes)
    finally:
        await engine.dispose()
        await drop_database(DB_NAME)
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        mode, prefix = sys.argv[2], sys.argv[3]
        publisher = publish_bridge if mode == "bridge" else publish_raw
        print(json.dumps(asyncio.run(publisher(os.environ["STUDYPUB_BENCH_DB_URL"], prefix))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--writes", type=int, default=20)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
