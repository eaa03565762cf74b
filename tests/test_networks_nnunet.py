"""nnU-Net v2 trained models: rebuilt from plans.json without imports, weights read without unpickling code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("dynamic_network_architectures")

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from mlflow_ccfv.networks import NetworkSpec, build_network, decoder_layers, output_head, small_spec
from mlflow_ccfv.networks.dynamic import resolve_layer_class
from mlflow_ccfv.networks.nnunet import read_nnunet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A 3d_fullres configuration as nnU-Net >= 2.4 writes it, CPU-sized; anisotropic like a real CT plan.
ARCH_KWARGS = {
    "n_stages": 4,
    "features_per_stage": [4, 8, 16, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage_decoder": [1, 1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
PER_STAGE = {"PlainConvUNet": "n_conv_per_stage", "ResidualEncoderUNet": "n_blocks_per_stage"}
PATCH = [16, 32, 24]  # nnU-Net's (z, y, x) array order (SimpleITKIO)
LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _original(architecture: str) -> nn.Module:
    """The network as nnU-Net builds it for training (classes located by name, deep supervision on)."""
    kwargs = {**ARCH_KWARGS, PER_STAGE[architecture]: [1, 2, 1, 1]}
    for key in ("conv_op", "norm_op", "nonlin"):
        kwargs[key] = resolve_layer_class(key, kwargs[key])
    cls = {"PlainConvUNet": PlainConvUNet, "ResidualEncoderUNet": ResidualEncoderUNet}[architecture]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return cls(input_channels=1, num_classes=len(LABELS), deep_supervision=True, **kwargs)


def _configuration(architecture: str, plans_format: str) -> dict:
    common = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": PATCH,
        "median_image_size_in_voxels": [60, 120, 100],
        "spacing": [2.5, 0.8, 0.8],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "batch_dice": False,
    }
    if plans_format == "2.4":
        class_path = f"dynamic_network_architectures.architectures.unet.{architecture}"
        arch = {
            "network_class_name": class_path,
            "arch_kwargs": {**ARCH_KWARGS, PER_STAGE[architecture]: [1, 2, 1, 1]},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
        return {**common, "architecture": arch}
    # nnU-Net 2.1 - 2.3: the network described by these keys (features double from the base, capped).
    return {
        **common,
        "UNet_class_name": architecture,
        "UNet_base_num_features": 4,
        "unet_max_num_features": 16,
        "n_conv_per_stage_encoder": [1, 2, 1, 1],
        "n_conv_per_stage_decoder": [1, 1, 1],
        "conv_kernel_sizes": ARCH_KWARGS["kernel_sizes"],
        "pool_op_kernel_sizes": ARCH_KWARGS["strides"],
        "num_pool_per_axis": [2, 3, 3],
    }


def write_nnunet_model(
    root: Path, architecture: str = "PlainConvUNet", plans_format: str = "2.4", logging_extra: dict | None = None
) -> tuple[Path, nn.Module]:
    """A trained-model folder as nnU-Net v2 writes it; returns (folder, the original module)."""
    folder = root / "Dataset003_Liver" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    plans = {
        "dataset_name": "Dataset003_Liver",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 0.8, 0.8],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": _configuration(architecture, plans_format),
            "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 300.0,
                "mean": 99.4,
                "median": 101.0,
                "min": -200.0,
                "percentile_00_5": -17.0,
                "percentile_99_5": 201.0,
                "std": 39.4,
            }
        },
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 3, "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    model = _original(architecture)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    model(torch.randn(1, 1, *PATCH))[0].mean().backward()
    optimizer.step()
    # What nnUNetTrainer.save_checkpoint writes (numpy scalars in the log, a torch.device in init_args).
    checkpoint = {
        "network_weights": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.5), np.float64(0.61)],
            "ema_fg_dice": [np.float32(0.55)],
            "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]],
            "train_losses": [np.mean([0.3, 0.2])],
            "lrs": [0.01],
            "epoch_end_timestamps": [1.7e9],
            **(logging_extra or {}),
        },
        "_best_ema": np.float64(0.6),
        "current_epoch": 1000,
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder, model


def _forward_with_features(model: nn.Module, names: list[str], head: str, x: torch.Tensor):
    modules = dict(model.named_modules())
    outputs, head_input = {}, {}
    hooks = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: outputs.setdefault(n, out.clone())) for n in names
    ]
    hooks.append(modules[head].register_forward_pre_hook(lambda _m, inp: head_input.setdefault("x", inp[0].clone())))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, outputs, head_input["x"]


@pytest.mark.parametrize(
    "architecture,plans_format",
    [
        ("PlainConvUNet", "2.4"),
        ("PlainConvUNet", "2.1"),
        ("ResidualEncoderUNet", "2.4"),
    ],
)
def test_read_nnunet_rebuilds_the_trained_network(tmp_path, architecture, plans_format):
    folder, original = write_nnunet_model(tmp_path, architecture, plans_format)
    spec, state, info = read_nnunet(folder, 0)
    assert spec.architecture == architecture and spec.in_channels == 1 and spec.out_channels == 3
    assert NetworkSpec.from_json(spec.to_json()) == spec  # plain data, JSON round trip
    module = build_network(spec)
    module.load_state_dict(state)
    original.decoder.deep_supervision = False
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(0))
    names, head = decoder_layers(module), output_head(module)
    assert names == ["decoder.stages.0", "decoder.stages.1", "decoder.stages.2"]
    assert head == "decoder.seg_layers.2"
    logits, outputs, head_input = _forward_with_features(module, names, head, x)
    with torch.no_grad():
        expected = original.eval()(x)
    assert torch.equal(logits, expected)
    assert torch.equal(outputs[names[-1]], head_input)
    assert [outputs[n].shape[1] for n in names] == [16, 8, 4]

    assert info["format"] == "nnunet_v2" and info["configuration"] == "3d_fullres" and info["fold"] == "0"
    assert info["trainer"] == "nnUNetTrainer" and info["epoch"] == 1000
    assert info["plans_patch_size"] == PATCH and info["patch_size"] == (24, 32, 16)  # SimpleITK: z, y, x -> x, y, z
    assert info["spacing"] == [0.8, 0.8, 2.5]
    assert info["normalization"] == [
        {"channel": "CT", "scheme": "CTNormalization", "mean": 99.4, "std": 39.4, "lower": -17.0, "upper": 201.0}
    ]


def test_configuration_inheritance_and_deep_supervision_guard(tmp_path):
    folder, _ = write_nnunet_model(tmp_path)
    spec, _, info = read_nnunet(folder, "0", configuration="3d_fullres_bs4")
    assert info["configuration"] == "3d_fullres_bs4" and spec.architecture == "PlainConvUNet"
    with pytest.raises(ValueError, match="no configuration '2d'.*3d_fullres, 3d_fullres_bs4"):
        read_nnunet(folder, 0, configuration="2d")
    with pytest.raises(FileNotFoundError, match="fold_0"):
        read_nnunet(folder, 3)
    module = build_network(spec)
    module.decoder.deep_supervision = True
    with pytest.raises(ValueError, match="deep_supervision = False"):
        decoder_layers(module)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder, _ = write_nnunet_model(tmp_path, logging_extra={"note": _RunsCode(marker)})
    with pytest.raises(ValueError, match="weights_only=True"):
        read_nnunet(folder, 0)
    assert not marker.exists()


def test_plans_cannot_name_other_classes(tmp_path):
    folder, _ = write_nnunet_model(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "my_lab.networks.PlainConvUNet"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="my_lab.networks.PlainConvUNet.*cannot be rebuilt"):
        read_nnunet(folder, 0)
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    arch["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="nonlin='os.system' is not an allowed layer type"):
        read_nnunet(folder, 0)
    with pytest.raises(ValueError, match="not an allowed layer type"):
        resolve_layer_class("conv_op", "evil.Conv3d")


def test_dynamic_spec_retargets_like_monai_specs():
    from mlflow_ccfv.training import head_parameter_names, init_for_finetuning

    spec = small_spec("PlainConvUNet", 1, 3)
    heads = head_parameter_names(spec)
    assert heads and all(k.startswith("decoder.seg_layers.") for k in heads)
    model, new_spec, skipped = init_for_finetuning(spec, build_network(spec).state_dict(), 1, 5)
    assert new_spec.out_channels == 5 and model(torch.randn(1, 1, 32, 32, 32)).shape[1] == 5
    with pytest.raises(ValueError, match="deep_supervision must be off"):
        build_network(NetworkSpec("PlainConvUNet", {**spec.kwargs, "deep_supervision": True}))


def test_register_nnunet_and_load_it_back(tracking_uri, tmp_path):
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.tracking.load import load_version
    from mlflow_ccfv.tracking.search import get_version

    folder, original = write_nnunet_model(tmp_path)
    result = CliRunner().invoke(
        main,
        ["register", "--name", "liver-nnunet", "--source-dataset", "Task03", "--nnunet", str(folder), "--fold", "0"],
    )
    assert result.exit_code == 0, result.output
    mv = get_version("models:/liver-nnunet/1")
    assert mv.tags["architecture"] == "PlainConvUNet" and mv.tags["patch_size"] == "24,32,16"
    assert mv.tags["import.format"] == "nnunet_v2" and mv.tags["import.configuration"] == "3d_fullres"
    assert json.loads(mv.tags["import.normalization"])[0]["scheme"] == "CTNormalization"
    loaded = load_version("models:/liver-nnunet/1")
    assert loaded.feature_layers == ["decoder.stages.0", "decoder.stages.1", "decoder.stages.2"]
    named = dict(loaded.module.named_modules())
    assert all(layer in named for layer in loaded.feature_layers)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{loaded.model_id}"))
    assert "dynamic-network-architectures==" in (local / "requirements.txt").read_text()
    result = CliRunner().invoke(
        main,
        ["register", "--name", "x", "--source-dataset", "Task03", "--nnunet", str(folder), "--small-spec", "UNet:1:3"],
    )
    assert result.exit_code == 2 and "one network source" in result.output
    result = CliRunner().invoke(
        main, ["register", "--name", "x", "--source-dataset", "y", "--nnunet", str(folder), "--fold", "five"]
    )
    assert result.exit_code == 2 and "--fold must be a fold number" in result.output


def _set(path: list, value):
    """An edit of plans.json: ``path`` of keys from the top, the last one set to ``value`` (or removed: None)."""

    def edit(plans: dict) -> None:
        node = plans
        for key in path[:-1]:
            node = node[key]
        if value is None:
            node.pop(path[-1])
        else:
            node[path[-1]] = value

    return edit


FULLRES = ["configurations", "3d_fullres"]
BAD_PLANS = {
    "architecture a function name": ("2.4", _set([*FULLRES, "architecture"], "os.system"), "architecture must be"),
    "configurations a list": ("2.4", _set(["configurations"], ["3d_fullres"]), "configurations must be"),
    "old plans without n_conv_per_stage_encoder": (
        "2.1",
        _set([*FULLRES, "n_conv_per_stage_encoder"], None),
        "n_conv_per_stage_encoder must be",
    ),
    "transpose_forward out of range": ("2.4", _set(["transpose_forward"], [0, 1, 7]), "transpose_forward must be"),
    "arch_kwargs a list": ("2.4", _set([*FULLRES, "architecture", "arch_kwargs"], [1]), "arch_kwargs must be"),
    "patch_size text": ("2.4", _set([*FULLRES, "patch_size"], "big"), "patch_size must be"),
    "inherits_from a number": ("2.4", _set([*FULLRES, "inherits_from"], 3), "inherits_from must be"),
}


@pytest.mark.parametrize("case", list(BAD_PLANS), ids=list(BAD_PLANS))
def test_plans_of_an_unexpected_shape_are_refused_by_field(tmp_path, case):
    plans_format, edit, fragment = BAD_PLANS[case]
    folder, _ = write_nnunet_model(tmp_path, plans_format=plans_format)
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError) as err:
        read_nnunet(folder, 0, configuration="3d_fullres")
    assert type(err.value) is ValueError, repr(err.value)  # not a KeyError / IndexError underneath
    assert fragment in str(err.value) and "plans.json" in str(err.value) and "\n" not in str(err.value)


def test_register_refuses_bad_plans_with_one_line(tracking_uri, tmp_path):
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main

    folder, _ = write_nnunet_model(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    plans["transpose_forward"] = [0, 1, 7]
    (folder / "plans.json").write_text(json.dumps(plans))
    result = CliRunner().invoke(main, ["register", "--name", "x", "--source-dataset", "y", "--nnunet", str(folder)])
    assert result.exit_code == 2, result.output
    assert "transpose_forward must be a permutation" in result.output and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if " INFO " not in line] == [
        next(line for line in result.output.splitlines() if line.startswith("register failed:"))
    ]


def test_imported_ct_model_is_scored_on_hu_normalised_with_its_own_plans(tracking_uri, tmp_path, real_data):
    """The sampler sees the real CT (HU) clipped to the plans' [percentile_00_5, percentile_99_5] and
    z-scored with the plans' foreground mean and std, not the target's statistics; the run says so.
    A version without recorded normalisation is scored on the target's normalisation as before."""
    import mlflow
    import nibabel as nib

    from mlflow_ccfv.data import MSDDataset, PreprocessedCase, make_target
    from mlflow_ccfv.data.derive import derive_task
    from mlflow_ccfv.features import FeatureSet, sample_features
    from mlflow_ccfv.networks import random_state_dict
    from mlflow_ccfv.pipelines.register import BankEntry, NnUNetSource, register_version
    from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
    from mlflow_ccfv.scoring import CaseCache, sampler_config_for
    from mlflow_ccfv.tracking import tags as T
    from mlflow_ccfv.tracking.load import load_version
    from mlflow_ccfv.tracking.register import register_network

    folder, _ = write_nnunet_model(tmp_path)
    register_version(NnUNetSource(str(folder)), BankEntry("liver-nnunet", "Task03", bank="ct"))
    plain = small_spec("UNet", 1, 3)
    register_network(plain, random_state_dict(plain, 0), "plain-unet", "none", bank="ct", patch_size="24,32,16")
    ct, seg = real_data / "totalseg-ct" / "example_ct_sm.nii.gz", real_data / "totalseg-ct" / "example_seg.nii.gz"
    # the real CT twice: CC-FV compares cases pairwise
    task = derive_task([ct, ct], [seg, seg], tmp_path / "data", {1: "spleen"}, "Task09_Spleen", case_ids=["a", "b"])
    ds = MSDDataset.load(task)
    target = make_target(ds, "all")
    cache = tmp_path / "cache"
    sampler = {"global_samples": 64}
    score_versions(
        ["models:/liver-nnunet/1", "models:/plain-unet/1"], target, ScoreConfig(["ccfv"], sampler, cache_dir=cache)
    )

    nnunet, other = load_version("models:/liver-nnunet/1"), load_version("models:/plain-unet/1")
    hu = np.asarray(nib.load(str(ct)).dataobj).astype(np.float64)  # RAS at 3 mm: the grid is kept
    expected = ((np.clip(hu, -17.0, 201.0) - 99.4) / 39.4).astype(np.float32)  # the fixture's plans
    for sees in CaseCache(target).cases(nnunet.normalization):
        np.testing.assert_allclose(sees.image[0].numpy(), expected, atol=1e-5)
    defaults = CaseCache(target).cases()
    assert not np.allclose(defaults[0].image[0].numpy(), expected, atol=0.1)  # the target's own statistics differ

    def cached(model_id: str) -> FeatureSet:
        (entry,) = (cache / "features" / model_id).glob("*.npz")
        return FeatureSet.load(entry)

    config = sampler_config_for((24, 32, 16), sampler)
    own = [
        PreprocessedCase(c.case_id, torch.from_numpy(expected)[None], c.label, c.spacing, c.affine) for c in defaults
    ]
    for loaded, cases in ((nnunet, own), (other, defaults)):
        fresh = sample_features(loaded.module, cases, loaded.feature_layers, config, device="cpu", progress=False)
        stored = cached(loaded.model_id)
        for i, layer in ((i, layer) for i in range(2) for layer in loaded.feature_layers):
            np.testing.assert_allclose(
                stored.cases[i].features[layer], fresh.cases[i].features[layer], atol=1e-4, err_msg=layer
            )
    runs = {r.data.tags[T.RUN_MODEL]: r for r in mlflow.search_runs(output_format="list") if T.RUN_MODEL in r.data.tags}
    assert (
        runs["liver-nnunet/1"].data.tags[T.RUN_NORMALIZATION]
        == "CT: CTNormalization(clip [-17, 201], (x - 99.4) / 39.4)"
    )
    assert runs["plain-unet/1"].data.tags[T.RUN_NORMALIZATION] == "target"


def test_imported_ct_model_is_fine_tuned_on_its_own_normalisation(tracking_uri, tmp_path, real_data):
    """Fine-tuning an imported version normalises the target with the version's plans and says so; its
    budget (hence the Dice it may reuse) is keyed by that normalisation too."""
    import mlflow

    from mlflow_ccfv.data import MSDDataset, make_target
    from mlflow_ccfv.data.derive import derive_task
    from mlflow_ccfv.pipelines.finetune import finetune_version
    from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest, budget_digest
    from mlflow_ccfv.pipelines.register import BankEntry, NnUNetSource, register_version
    from mlflow_ccfv.tracking import tags as T
    from mlflow_ccfv.training import TrainConfig

    folder, _ = write_nnunet_model(tmp_path)
    register_version(NnUNetSource(str(folder)), BankEntry("liver-nnunet", "Task03", bank="ct"))
    ct, seg = real_data / "totalseg-ct" / "example_ct_sm.nii.gz", real_data / "totalseg-ct" / "example_seg.nii.gz"
    task = derive_task([ct, ct], [seg, seg], tmp_path / "data", {1: "spleen"}, "Task09_Spleen", case_ids=["a", "b"])
    ds = MSDDataset.load(task)
    config = TrainConfig(steps=2, patch_size=(24, 32, 16), batch_size=1, seed=0)
    # cases pre-loaded with the target's normalisation (a study's) are not what this model is fed
    defaults = (list(ds.iter_cases(["a"], progress=False)), list(ds.iter_cases(["b"], progress=False)))
    outcome = finetune_version(
        FinetuneRequest(
            "models:/liver-nnunet/1",
            ds,
            config,
            cases=defaults,
            checkpoint_every=0,
            log_finetuned_model=False,
            progress=False,
        )
    )
    run = mlflow.get_run(outcome.run_id)
    assert run.data.tags[T.RUN_NORMALIZATION] == "CT: CTNormalization(clip [-17, 201], (x - 99.4) / 39.4)"
    target = make_target(ds, "train")
    budget = mlflow.MlflowClient().get_model_version("liver-nnunet", "1").tags[T.finetune_budget_tag(target.name)]
    assert budget != budget_digest(config, (0,), 0, 0.5, target.digest)  # not the budget of the target's normalisation


@pytest.mark.slow
def test_imported_ct_model_races_on_its_own_normalisation(tracking_uri, tmp_path, real_data):
    """A ``select`` race unit of an imported version fine-tunes and validates on the target normalised
    with the version's plans, as ``finetune`` does, even when the caller pre-loaded the target's own."""
    from mlflow_ccfv.data import MSDDataset
    from mlflow_ccfv.data.derive import derive_task
    from mlflow_ccfv.pipelines.register import BankEntry, NnUNetSource, register_version
    from mlflow_ccfv.pipelines.select_race import SelectTask, race_unit
    from mlflow_ccfv.tracking.load import load_version
    from mlflow_ccfv.training import TrainConfig, evaluate_dice, finetune

    folder, _ = write_nnunet_model(tmp_path)
    register_version(NnUNetSource(str(folder)), BankEntry("liver-nnunet", "Task03", bank="ct"))
    ct, seg = real_data / "totalseg-ct" / "example_ct_sm.nii.gz", real_data / "totalseg-ct" / "example_seg.nii.gz"
    task = derive_task([ct, ct], [seg, seg], tmp_path / "data", {1: "spleen"}, "Task09_Spleen", case_ids=["a", "b"])
    ds = MSDDataset.load(task)
    config = TrainConfig(steps=2, patch_size=(24, 32, 16), batch_size=1, seed=0)
    unit = SelectTask("models:/liver-nnunet/1", 0, config, str(task), ("a",), ("b",), 2, device="cpu")
    defaults = (list(ds.iter_cases(["a"], progress=False)), list(ds.iter_cases(["b"], progress=False)))
    raced = race_unit(unit, cases=defaults)

    loaded = load_version("models:/liver-nnunet/1")
    assert loaded.normalization is not None

    def dice_on(fit, validation) -> float:
        result, _ = finetune(loaded.spec, loaded.module.state_dict(), fit, 2, config, progress=False, device="cpu")
        return float(evaluate_dice(result.model, validation, 2, config.patch_size, progress=False, device="cpu").mean)

    own = tuple(list(ds.iter_cases([i], progress=False, normalization=loaded.normalization)) for i in ("a", "b"))
    assert raced.dice == dice_on(*own)
    assert dice_on(*defaults) != dice_on(*own)  # the two normalisations are told apart by the Dice
