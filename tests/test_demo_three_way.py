"""``make demo-three-way`` (issue 17): SynShot inversion vs 3DRealHead enrollment (3 and 1 views) vs the
no-prior baseline on the same subjects, inputs and held-out images.

The end-to-end run (two tiny priors trained for 2 steps, a few steps per fit) is slow-marked; the fast
tests check the pieces: the demo's two prior configs share one dataset and the same input cameras, the
method registry, the digests and the check built on them, the table with four methods and its paired Δs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from avatar_lightning.demo import (
    METHODS,
    SPLITS,
    Fit,
    check_same_data,
    fit_overrides,
    main,
    markdown_table,
    parse_methods,
    split_digests,
    summarize,
)
from avatar_lightning.demo.methods import fit_args
from avatar_lightning.demo.run import same_subjects
from avatar_lightning.lit.fewshot_data import FewShotSplit
from tests.test_experiments import DATA, EXPERIMENTS
from tests.test_lit_prior import TINY_NET

pytestmark = pytest.mark.usefixtures("one_thread")
GENERATOR = ("root", "identities", "expressions", "image_size", "cameras", "val_identities", "test_identities",
             "seed", "head_model", "n_shape", "n_expr", "surface_points", "texture_size", "hair_density")


def _data(name: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / name).read_text())["data"]


def test_the_two_demo_priors_train_on_one_dataset_and_the_methods_get_the_same_cameras() -> None:
    from avatar_lightning.synth.rig import build_rig
    from data_modules.realhead import RealHeadSyntheticDataModule
    from data_modules.synthetic import SyntheticDataModule, fewshot_cameras

    synshot, realhead = _data("demo_prior.yaml"), _data("demo_realhead_prior.yaml")
    assert realhead["class_path"] == "data_modules.realhead.RealHeadSyntheticDataModule"
    a, b = synshot["init_args"], realhead["init_args"]
    assert {k: a.get(k) for k in GENERATOR} == {k: b.get(k) for k in GENERATOR}
    dm_a, dm_b = SyntheticDataModule(**a), RealHeadSyntheticDataModule(**b)
    assert dm_a.data_dir == dm_b.data_dir and dm_a.split_identities() == dm_b.split_identities()
    dm_b.rig = build_rig(a["cameras"], a["image_size"], a["image_size"], torch.zeros(3))
    three = dm_b.identity_cameras(3)
    assert set(three) == set(fewshot_cameras(dm_b.rig, 3)) and len(three) == 3  # same cameras, frontal first
    assert dm_b.identity_cameras(1) == three[:1]


def test_methods_registry_and_fit_arguments(tmp_path: Path) -> None:
    assert parse_methods("inversion,baseline") == ["inversion", "baseline"]
    assert parse_methods("all") == list(METHODS) == ["inversion", "baseline", "enrollment", "enrollment_1view"]
    assert parse_methods("enrollment,inversion") == ["inversion", "enrollment"]  # table order
    with pytest.raises(ValueError, match="unknown"):
        parse_methods("inversion,realhead")
    priors = {"synshot": tmp_path / "prior.ckpt", "realhead": tmp_path / "realhead_prior.ckpt"}
    args = {m: fit_args(m, 12, priors, tmp_path / m, ["--x=1"]) for m in METHODS}
    assert f"--model.init_args.prior_checkpoint={priors['synshot']}" in args["inversion"]
    assert not any(a.startswith("--model.init_args.prior_checkpoint") for a in args["baseline"])
    for m, views in (("enrollment", 3), ("enrollment_1view", 1)):
        assert f"--model.init_args.prior_checkpoint={priors['realhead']}" in args[m]
        assert f"--data.init_args.views={views}" in args[m] and "experiments/enroll.yaml" in args[m]
    assert all("--data.init_args.identity=12" in a and "--x=1" in a for a in args.values())
    cap = {m: [a for a in fit_overrides(m, 0, 600, 4000, None, 2) if "max_steps_per_frame" in a] for m in METHODS}
    assert cap["enrollment"] == cap["inversion"] == ["--trainer.callbacks.init_args.max_steps_per_frame=600"]
    assert cap["enrollment_1view"] == ["--trainer.callbacks.init_args.max_steps_per_frame=1800"]  # same 1,800 steps


def four_method_fits() -> list[Fit]:
    """Two identities, four methods; PSNR per (identity, method), the other scores constant."""
    psnr = {"inversion": (22.0, 23.0), "baseline": (20.0, 20.0), "enrollment": (24.0, 27.0),
            "enrollment_1view": (23.0, 25.0)}
    fits = []
    for i, identity in enumerate((11, 12)):
        for method, values in psnr.items():
            metrics = {s: {"psnr": values[i], "ssim": 0.8, "lpips": 0.2, "id": 0.5} for s in SPLITS}
            fits.append(Fit(method, identity, metrics, 1.0, steps=60 if method == "enrollment_1view" else 200,
                            stop_kind="plateau", stop_reason="EMA"))
    return fits


def _split(cams: list[int], images: torch.Tensor, evaluation: list[dict]) -> FewShotSplit:
    n = len(cams)
    inputs = {"image": images[None], "mask": torch.ones(1, n, 1, 4, 4), "K": torch.eye(3).expand(1, n, 3, 3),
              "world_to_cam": torch.stack([torch.eye(4) * (c + 1) for c in cams])[None], "shape": torch.zeros(1, 2),
              "expr": torch.zeros(1, 2), "pose": torch.zeros(1, 5, 3), "translation": torch.zeros(1, 3)}
    return FewShotSplit(identity=0, inputs=inputs, evaluation=evaluation, input_cameras=cams)


def test_digests_ignore_the_input_order_and_see_any_change() -> None:
    evaluation = [{"identity": torch.tensor(0), "frame": torch.tensor(e), "image": torch.rand(2, 3, 4, 4),
                   "mask": torch.ones(2, 1, 4, 4), "K": torch.eye(3).expand(2, 3, 3),
                   "world_to_cam": torch.eye(4).expand(2, 4, 4)} for e in range(2)]
    images = torch.rand(3, 3, 4, 4)
    synshot = _split([1, 5, 2], images, evaluation)
    realhead = _split([5, 1, 2], images[[1, 0, 2]], evaluation)  # frontal first: the same views reordered
    assert split_digests(synshot) == split_digests(realhead)
    other = _split([1, 5, 2], images.flip(-1), evaluation)
    assert split_digests(other)[0] != split_digests(synshot)[0] and split_digests(other)[1] == split_digests(synshot)[1]
    assert split_digests(synshot, evaluation[:1])[1] != split_digests(synshot)[1]


def test_check_same_data_refuses_other_inputs_or_held_out_images() -> None:
    def fit(method: str, cams: list[int], inputs: str, held_out: str) -> Fit:
        return Fit(method, 11, {}, 0.0, input_cameras=cams, inputs_fp=inputs, eval_fp=held_out)

    fits = [fit("inversion", [1, 5, 2], "a", "e"), fit("enrollment", [5, 1, 2], "a", "e"),
            fit("enrollment_1view", [5], "f", "e")]
    check_same_data(fits)
    with pytest.raises(ValueError, match="identity 11: baseline saw other inputs than inversion"):
        check_same_data([*fits, fit("baseline", [1, 5, 2], "b", "e")])
    with pytest.raises(ValueError, match="baseline was scored on other held-out images"):
        check_same_data([*fits, fit("baseline", [1, 5, 2], "a", "x")])
    with pytest.raises(ValueError, match="enrollment_1view saw other inputs"):
        check_same_data([*fits[:2], fit("enrollment_1view", [7], "f", "e")])


def test_table_with_four_methods_and_the_one_view_row() -> None:
    fits = four_method_fits()
    summary = summarize(fits)
    assert set(summary) == {*METHODS, "delta", "delta_enrollment", "delta_enrollment_inversion", "delta_1view"}
    # per identity enrollment_1view − enrollment on PSNR: (23 - 24, 25 - 27) -> -1.5 ± 0.71
    assert summary["delta_1view"]["novel_view_side/psnr"]["mean"] == pytest.approx(-1.5)
    table = markdown_table(fits, [11, 12])
    for label in ("3DRealHead enrollment (prior)", "3DRealHead enrollment, 1 view", "no-prior baseline",
                  "Δ enrollment − baseline (winner)", "Δ enrollment − inversion (winner)",
                  "Δ 1 view − enrollment (winner)", "scored on the 3-view methods' held-out images",
                  "enrollment_1view 60 ± 0 (plateau 2/2)"):
        assert label in table, label


def test_priors_on_other_datasets_are_refused(tmp_path: Path) -> None:
    base = {"root": str(tmp_path), "identities": 8, "expressions": 2, "image_size": 16, "cameras": 8,
            "test_identities": 2}
    paths = {}
    for kind, cls, cams in (("synshot", "data_modules.synthetic.SyntheticDataModule", 8),
                            ("realhead", "data_modules.realhead.RealHeadSyntheticDataModule", 12)):
        paths[kind] = tmp_path / f"{kind}.ckpt"
        torch.save({"dataset": {"class_path": cls, "init_args": {**base, "cameras": cams}}}, paths[kind])
    with pytest.raises(ValueError, match="different datasets"):
        same_subjects(paths, 2)
    torch.save({"dataset": {"class_path": "data_modules.realhead.RealHeadSyntheticDataModule",
                            "init_args": {**base, "uv_size": 32}}}, paths["realhead"])
    assert same_subjects(paths, 2) == [6, 7]  # uv_size is each prior's own; the data are one


@pytest.mark.slow
def test_shrunk_three_way_run_through_the_entry_point(tmp_path: Path) -> None:
    """Both demo priors shrunk (2 steps, tiny data), every method on one held-out identity, 3 steps a fit."""
    data = [f"--data.init_args.root={tmp_path / 'data'}", *[f"--data.init_args.{k}={v}" for k, v in DATA.items()]]
    tiny = ["--trainer.max_steps=2", *data]
    synshot = [*tiny, *[f"--model.init_args.net.{k}={v}" for k, v in TINY_NET.items() if k != "map_resolution"],
               "--model.init_args.part_samples={face: 8, hair: 6}"]
    realhead = [*tiny, "--model.init_args.levels=2", "--model.init_args.c_base=128", "--model.init_args.c_max=16",
                "--model.init_args.style_dim=16", "--model.init_args.adv_weight=0"]
    out = tmp_path / "demo3"
    argv = ["--out", str(out), "--methods", "all", "--identities", "1", "--cap-steps-per-frame", "1",
            "--max-steps", "3", "--video-frames", "2", *[f"--prior-override={a}" for a in synshot],
            *[f"--realhead-prior-override={a}" for a in realhead]]
    table = main(argv)
    for method in METHODS.values():
        assert method.label in table
    assert "Δ 1 view − enrollment" in table and "Δ enrollment − baseline" in table
    results = json.loads((out / "results.json").read_text())
    fits = {f["method"]: f for f in results["fits"]}
    assert set(fits) == set(METHODS)
    for key, stats in results["summary"].items():
        assert stats and all(math.isfinite(v["mean"]) and math.isfinite(v["std"]) for v in stats.values()), key
    assert set(results["summary"]["enrollment_1view"]) == set(results["summary"]["baseline"])
    three = {m: f for m, f in fits.items() if m != "enrollment_1view"}
    assert len({tuple(sorted(f["input_cameras"])) for f in three.values()}) == 1  # the same 3 input cameras
    assert len({f["fingerprints"]["inputs"] for f in three.values()}) == 1  # ... images and parameters
    assert len({f["fingerprints"]["evaluation"] for f in fits.values()}) == 1  # the same held-out images
    assert fits["enrollment_1view"]["input_cameras"] == fits["enrollment"]["input_cameras"][:1]  # frontal
    assert all(f["stop_kind"] == "budget" and f["steps"] == 3 for f in fits.values())  # the cap (1 view too), flagged
    assert "**Stopped by a cap, not converged" in table
    assert main([*argv, "--resume"]).split("Settings")[0] == table.split("Settings")[0]  # nothing refitted
