"""Pull of a ~50 MiB multi-layer image (random-content layers) from a loopback docker-registry, and
the time to prepare a container root filesystem from the pulled image: medians, beside
``skopeo copy`` to an OCI layout and ``umoci unpack`` where they are installed (skipped otherwise).

Usage (as root): .venv/bin/python bench/images.py [--runs N] [--layers N] [--mib N] [--driver overlay|vfs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.paths import Paths  # noqa: E402
from services.highlevel.images import transfer  # noqa: E402
from services.highlevel.images.manager import ImageManager  # noqa: E402
from services.highlevel.images.registry import RegistryOptions  # noqa: E402
from services.highlevel.snapshots.snapshotter import Driver, SnapshotKind  # noqa: E402
from tests.support.oci_image import (  # noqa: E402
    Entry,
    build_image,
    busybox_layer,
    make_layer,
    store_image,
    tar_of_entries,
)
from tests.support.registry import run_registry  # noqa: E402


def random_layer(i: int, mib: int) -> bytes:
    # Several files per layer, random bytes so that compression does not shrink the transfer.
    per = (mib << 20) // 4
    return tar_of_entries([Entry(f"data{i}/f{j}", data=os.urandom(per)) for j in range(4)])


def clean(manager: ImageManager) -> None:
    for info in manager.snapshots.list():
        if info.kind is SnapshotKind.ACTIVE:
            manager.snapshots.remove(info.key)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--mib", type=int, default=12, help="MiB per random layer")
    parser.add_argument("--driver", choices=[d.value for d in Driver], default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (mounts)", file=sys.stderr)
        return 2
    driver = Driver(args.driver) if args.driver else None
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-images-"))
    figures: dict[str, list[float]] = {}
    try:
        layers = [busybox_layer(work)] + [make_layer(random_layer(i, args.mib)) for i in range(args.layers - 1)]
        image = build_image(layers)
        total = sum(len(x.blob) for x in layers)
        with run_registry(work / "registry") as reg:
            name = f"{reg.host}:{reg.port}/bench/img:1"
            src = ImageManager(Paths(work / "src"), registry_options=RegistryOptions(plain_http=True))
            store_image(src, name, image)
            asyncio.run(transfer.push(src, name))
            for run in range(args.runs):
                m = ImageManager(Paths(work / f"run{run}"), registry_options=RegistryOptions(plain_http=True),
                                 driver=driver)
                try:
                    t0 = time.perf_counter()
                    asyncio.run(transfer.pull(m, name))
                    figures.setdefault("skiff pull (download+unpack)", []).append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    asyncio.run(m.prepare(name, "ctr"))
                    figures.setdefault("skiff prepare rootfs", []).append(time.perf_counter() - t0)
                finally:
                    clean(m)
                shutil.rmtree(work / f"run{run}", ignore_errors=True)
            skopeo, umoci = shutil.which("skopeo"), shutil.which("umoci")
            for run in range(args.runs if skopeo else 0):
                layout = work / f"oci{run}"
                figures.setdefault("skopeo copy → OCI layout", []).append(timed([
                    skopeo, "copy", "--src-tls-verify=false", f"docker://{name}", f"oci:{layout}:img"]))
                if umoci:
                    figures.setdefault("umoci unpack", []).append(timed([
                        umoci, "unpack", "--image", f"{layout}:img", str(work / f"bundle{run}")]))
                shutil.rmtree(layout, ignore_errors=True)
                shutil.rmtree(work / f"bundle{run}", ignore_errors=True)
        used = driver or ImageManager(Paths(work / "probe")).snapshots.driver
        print(f"image: {len(layers)} layers, {total / (1 << 20):.1f} MiB compressed; driver {used.value}")
        print(f"medians over {args.runs} runs, ms")
        for k, v in figures.items():
            print(f"  {k:34s} {statistics.median(v) * 1000:9.1f}")
        if not shutil.which("skopeo"):
            print("  skopeo copy → OCI layout            skipped (not installed)")
        if not shutil.which("umoci"):
            print("  umoci unpack                        skipped (not installed)")
        base = figures.get("skopeo copy → OCI layout")
        if base:
            ratio = statistics.median(figures["skiff pull (download+unpack)"]) / statistics.median(base)
            print(f"  skiff pull (with unpack) / skopeo copy (download only): {ratio:.2f}")
        unpack = figures.get("umoci unpack")
        if base and unpack:
            # The like-for-like figure: registry to a ready root filesystem, both ways.
            ours = statistics.median(figures["skiff pull (download+unpack)"]) + statistics.median(
                figures["skiff prepare rootfs"])
            theirs = statistics.median(base) + statistics.median(unpack)
            print(f"  registry → rootfs: skiff {ours * 1000:.1f} ms, skopeo+umoci {theirs * 1000:.1f} ms, "
                  f"ratio {ours / theirs:.2f} (lower is better)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
