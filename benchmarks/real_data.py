"""Real-data loaders: parse time and loader throughput on published-format fixtures.

NeRSemble: 16 cameras x 8 timesteps at 512x512 read with 4x down-sampling (3DRealHead's setting,
at a smaller source size); INSTA: 40 frames at 512x512 with metrical-tracker checkpoints.
Prints seconds to ``setup()`` and samples per second through one epoch of the train loader.
Timings on a shared CPU are noisy; compare runs on the same machine only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules import INSTADataModule, NeRSembleDataModule  # noqa: E402
from tests.real_fixtures import build_insta_fixture, build_vhap_fixture, fixture_head  # noqa: E402


def throughput(dm) -> tuple[float, float]:
    t0 = time.perf_counter()
    dm.setup("fit")
    parse = time.perf_counter() - t0
    t0, n = time.perf_counter(), 0
    for batch in dm.train_dataloader():
        n += batch["image"].shape[0]
    return parse, n / (time.perf_counter() - t0)


def main() -> None:
    head = fixture_head()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_vhap_fixture(root / "vhap", head, n_timesteps=8, cameras=tuple(range(16)), size=512)
        nersemble = NeRSembleDataModule([str(root / "vhap")], downsample=4, views_per_sample=4, n_shape=head.n_shape,
                                        n_expr=head.n_expr, batch_size=4)
        parse, rate = throughput(nersemble)
        print(f"NeRSemble 16 cams x 8 timesteps, 512->128 (4x): setup {parse:.2f} s, {rate:.1f} samples/s (V=4)")
        build_insta_fixture(root / "insta/actor", head, n_frames=40, size=512, tracker_dir=root / "insta/tracker")
        insta = INSTADataModule([str(root / "insta/actor")], tracker_dirs=[str(root / "insta/tracker")], n_test=10,
                                n_val=2, n_shape=head.n_shape, n_expr=head.n_expr, batch_size=4)
        parse, rate = throughput(insta)
        print(f"INSTA 40 frames 512x512 + tracker: setup {parse:.2f} s, {rate:.1f} samples/s")


if __name__ == "__main__":
    main()
