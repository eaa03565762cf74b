"""The ``pretrain`` pipeline: train a bank model on a source task and register it, and the random-init controls.

``pretrain_and_register``: train a MONAI network on a source task (:func:`mlflow_ccfv.training.pretrain`)
in a run (params = the budget, metric ``train_loss`` per step, ``training_curve.png``) and register
it through :func:`~mlflow_ccfv.tracking.register.register_network` with the bank tags plus
``pretrain.*`` tags (the budget and the run). ``register_control``: the randomly initialised network
of an architecture (``source_dataset=random-init``), the control every study includes.

Did the bank learn its source? With ``source_holdout`` (default) a model is pre-trained on its
source's 80% split only and its Dice on the held-out 20% is measured (DiceMetric, sliding window,
as for fine-tuning): the version tag ``pretrain.source_dice`` and the run metric ``source_dice``.
``pretrain_checkpoints`` adds a pre-training curve: the source Dice every ``curve_every`` steps
(metric ``source_dice`` per step) and, with ``early_step``, the network at that step registered as a
second version ``<name>-early`` (tag ``pretrain.checkpoint=early``; the last step's is ``final``),
so a bank spans model quality the way a real model zoo does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset, PreprocessConfig, PreprocessedCase, short_name
from mlflow_ccfv.features.resources import check_memory, training_bytes
from mlflow_ccfv.networks import DEFAULT_PATCH_SIZE, NetworkSpec, resolve_device, small_spec
from mlflow_ccfv.options import format_ints, parse_ints
from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE, TWIN_SEED, network_identity
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import load_msd_dataset
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME
from mlflow_ccfv.tracking.load import load_version
from mlflow_ccfv.tracking.ranking_writes import set_version_tag
from mlflow_ccfv.tracking.register import delete_version, register_network
from mlflow_ccfv.tracking.runs import command_run, log_training_curve
from mlflow_ccfv.tracking.search import DEFAULT_BANK, check_name, find_version, find_versions
from mlflow_ccfv.training import TrainConfig, evaluate_dice, pretrain, seeded_network

__all__ = [
    "CONTROL_SOURCE",
    "bank_name",
    "check_training_resources",
    "load_dataset",
    "pretrain_and_register",
    "pretrain_checkpoints",
    "drop_duplicate_twins",
    "register_control",
    "register_twins",
]

_logger = logging.getLogger(__name__)


def load_dataset(dataset: str | Path | MSDDataset, data_root: str | Path | None) -> MSDDataset:
    """``dataset`` as is, a logged dataset (``runs:/<run_id>/<folder>``, downloaded once and verified), or
    the task folder it names (under ``data_root``)."""
    return load_msd_dataset(dataset, data_root)


def _select_channels(cases: list[PreprocessedCase], channels: Sequence[int] | None) -> list[PreprocessedCase]:
    if channels is None:
        return cases
    channels = list(channels)
    for c in cases:
        if max(channels) >= c.image.shape[0]:
            raise ValueError(
                f"Case {c.case_id!r} has {c.image.shape[0]} channel(s); cannot select channels {channels}."
            )
        c.image = c.image[channels]
    return cases


def check_training_resources(config: TrainConfig, device: str | None = None) -> str:
    """Refuse before any work a ``device`` that does not exist here, or a patch size and batch whose
    memory lower bound (:func:`~mlflow_ccfv.features.resources.training_bytes`) exceeds the available
    memory. Returns the device to train on."""
    chosen = str(resolve_device(device or None))
    check_memory(
        training_bytes(config.patch_size, config.batch_size),
        "--patch-size",
        config.patch_size,
        f"lower --patch-size or --batch-size (now {config.batch_size}).",
    )
    return chosen


def bank_name(architecture: str, source: str, prefix: str = "") -> str:
    """Registered-model name of a bank entry: ``[<prefix>-]<arch>-<source>`` (``unet-Task03``)."""
    return "-".join(p for p in (prefix, architecture.lower(), source) if p)


def pretrain_and_register(
    source: str | Path | MSDDataset,
    architecture: str,
    config: TrainConfig,
    *,
    name: str | None = None,
    bank: str = DEFAULT_BANK,
    data_root: str | Path | None = None,
    channels: Sequence[int] | None = None,
    preprocess: PreprocessConfig | None = None,
    reuse: bool = True,
    progress: bool = True,
    source_holdout: bool = True,
    device: str | None = None,
) -> ModelVersion:
    """Pre-train ``architecture`` (a CPU-sized :func:`small_spec`) on ``source`` and register it in
    ``bank``. ``channels`` selects input channels (e.g. ``[0]``: BRATS's FLAIR only, to match 1-channel
    CT targets). ``source_holdout``: train on the source's 80% split and tag the Dice on its 20%
    (``pretrain.source_dice``); else train on every case. With ``reuse``, an existing version of the
    same name, source, bank and budget is returned instead of training again (whatever device trained
    it). ``device``: where to train (default CUDA when available, else CPU). Returns the ``ModelVersion``.
    """
    return pretrain_checkpoints(
        source,
        architecture,
        config,
        name=name,
        bank=bank,
        data_root=data_root,
        channels=channels,
        preprocess=preprocess,
        reuse=reuse,
        progress=progress,
        source_holdout=source_holdout,
        device=device,
    )[-1]


def _source_dice(
    model, cases: list[PreprocessedCase], num_classes: int, config: TrainConfig, progress: bool, device=None
) -> float:
    """Dice on the source's held-out cases; NaN (with a warning) when none of them has a foreground class."""
    try:
        return evaluate_dice(
            model, cases, num_classes, config.patch_size, progress=progress, desc="source Dice", device=device
        ).mean
    except ValueError as exc:
        _logger.warning("source Dice not measured: %s", exc)
        return float("nan")


def pretrain_checkpoints(
    source: str | Path | MSDDataset,
    architecture: str,
    config: TrainConfig,
    *,
    name: str | None = None,
    bank: str = DEFAULT_BANK,
    data_root: str | Path | None = None,
    channels: Sequence[int] | None = None,
    preprocess: PreprocessConfig | None = None,
    reuse: bool = True,
    progress: bool = True,
    source_holdout: bool = True,
    curve_every: int = 0,
    early_step: int | None = None,
    device: str | None = None,
) -> list[ModelVersion]:
    """:func:`pretrain_and_register` with a pre-training curve: the source Dice every ``curve_every``
    steps (run metric ``source_dice`` at that step; needs ``source_holdout``) and, with ``early_step``
    (a multiple of ``curve_every`` below ``config.steps``), the network at that step registered as
    ``<name>-early`` (tag ``pretrain.checkpoint=early``, ``pretrain.steps`` = the step) besides the
    final one (``pretrain.checkpoint=final``). Returns ``[early, final]`` or ``[final]``.
    """
    small_spec(architecture, 1, 2, config.patch_size)  # an unknown architecture is refused before any work
    check_name("bank", bank)
    if name is not None:
        check_name("Registered model name", name)
    check_training_resources(config, device)
    if early_step is not None and (not curve_every or early_step % curve_every or not 0 < early_step < config.steps):
        raise ValueError(
            f"early_step ({early_step}) must be a multiple of curve_every ({curve_every}) between 0 and the "
            f"pre-training steps ({config.steps}); e.g. curve_every={max(1, config.steps // 4)}, "
            f"early_step={max(1, config.steps // 4)}."
        )
    if curve_every and not source_holdout:
        raise ValueError("A pre-training curve measures the source Dice on held-out cases: keep source_holdout.")
    ds = load_dataset(source, data_root)
    src = short_name(ds)
    name = name or bank_name(architecture, src)
    early_name = f"{name}-early"
    channel_text = ",".join(map(str, channels)) if channels is not None else "all"
    digest = config.digest(
        architecture=architecture,
        channels=channel_text,
        dataset=ds.digest(),
        **({"holdout": "80/20 seed 0"} if source_holdout else {}),
    )
    wanted = {T.SOURCE_DATASET: src, T.BANK: bank, T.pretrain_tag("budget"): digest}
    early_wanted = {**wanted, T.PRETRAIN_CHECKPOINT: "early", T.pretrain_tag("steps"): str(early_step)}
    if reuse and (existing := find_version(name, wanted)) is not None:
        early = find_version(early_name, early_wanted) if early_step is not None else None
        if early_step is None or early is not None:
            _logger.info("reusing %s/%s (pre-trained on %s, same budget)", name, existing.version, src)
            return [v for v in (early, existing) if v is not None]
    run_on = resolve_device(device)
    if source_holdout:
        split = ds.split(seed=0)
        train = _select_channels(list(ds.iter_cases(split.train, config=preprocess, progress=progress)), channels)
        held_out = _select_channels(list(ds.iter_cases(split.test, config=preprocess, progress=progress)), channels)
    else:
        train = _select_channels(list(ds.iter_cases(config=preprocess, progress=progress)), channels)
        held_out = []
    in_channels = int(train[0].image.shape[0])
    num_classes = len(ds.labels)
    spec = small_spec(architecture, in_channels, num_classes, config.patch_size)
    curve: dict[int, float] = {}
    early_state: dict | None = None
    with command_run(f"pretrain {name}") as run:
        mlflow.set_tags({T.RUN_STAGE: "pretrain", T.RUN_MODEL: name})
        mlflow.log_params(
            {
                "source_dataset": src,
                "architecture": architecture,
                "n_cases": len(train),
                "n_held_out": len(held_out),
                "channels": channel_text,
                "spec": spec.to_json()[:6000],
                "curve_every": curve_every,
                "early_step": early_step,
                "device": str(run_on),
                **T.prefixed_params("train", config.to_dict()),
            }
        )

        def checkpoint(step: int, model) -> None:
            nonlocal early_state
            curve[step] = _source_dice(model, held_out, num_classes, config, progress=False, device=run_on)
            mlflow.log_metric(T.SOURCE_DICE_METRIC, curve[step], step=step)
            _logger.info("pretrain %s: step %d/%d, source Dice %.4f", name, step, config.steps, curve[step])
            if step == early_step:
                early_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

        result = pretrain(
            spec,
            train,
            config,
            progress=progress,
            desc=f"pretrain {name}",
            checkpoint_every=curve_every,
            on_checkpoint=checkpoint if curve_every else None,
            device=run_on,
        )
        log_training_curve(result.losses, f"pre-training {name} on {src}")
        mlflow.log_metrics({"train_seconds": result.seconds, "final_loss": result.losses[-1]})
        source_dice = float("nan")
        if held_out:
            source_dice = _source_dice(result.model, held_out, num_classes, config, progress, device=run_on)
            mlflow.log_metric(T.SOURCE_DICE_METRIC, source_dice, step=config.steps)
        base = {
            "batch_size": config.batch_size,
            "patch_size": "x".join(map(str, config.patch_size)),
            "seed": config.seed,
            "learning_rate": config.learning_rate,
            "channels": channel_text,
            "budget": digest,
            "run_id": run.info.run_id,
            "seconds": f"{result.seconds:.1f}",
        }

        def register(version_name: str, state: dict, steps: int, dice: float, checkpoint_tag: str | None):
            extra = {T.pretrain_tag(k): v for k, v in {**base, "steps": steps}.items()}
            if dice == dice:
                extra[T.PRETRAIN_SOURCE_DICE] = f"{dice:.6f}"
            if checkpoint_tag:
                extra[T.PRETRAIN_CHECKPOINT] = checkpoint_tag
            return register_network(
                spec,
                state,
                version_name,
                src,
                bank=bank,
                extra_tags=extra,
                patch_size=config.patch_size,
                description=f"{architecture} pre-trained on {src} for {steps} steps"
                + (f" (the {checkpoint_tag} checkpoint of run {run.info.run_id})" if checkpoint_tag else ""),
            )

        out = []
        if early_step is not None and early_state is not None:
            out.append(register(early_name, early_state, early_step, curve.get(early_step, float("nan")), "early"))
        out.append(
            register(name, result.model.state_dict(), config.steps, source_dice, "final" if early_step else None)
        )
        mlflow.set_tag(T.RUN_REGISTERED, ",".join(f"models:/{mv.name}/{mv.version}" for mv in out))
    for mv in out:
        _logger.info(
            "registered %s/%s: %s pre-trained on %s (%s steps, source Dice %s, %.0f s)",
            mv.name,
            mv.version,
            architecture,
            src,
            mv.tags.get(T.pretrain_tag("steps")),
            mv.tags.get(T.PRETRAIN_SOURCE_DICE, "not measured"),
            result.seconds,
        )
    return out


def register_control(
    architecture: str,
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int],
    *,
    bank: str = DEFAULT_BANK,
    seed: int = 0,
    name: str | None = None,
    reuse: bool = True,
    spec: NetworkSpec | None = None,
    normalization: str | None = None,
) -> ModelVersion:
    """Register the randomly initialised ``architecture`` (tag ``source_dataset=random-init``): the CPU-sized
    :func:`small_spec` with these channels, or ``spec`` as given (a twin of a registered model: the same
    constructor arguments; its digest is tagged, so a twin is reused only for the same spec); ``normalization``:
    the ``import.normalization`` of the model it is the twin of (the same input as that model)."""
    patch = tuple(int(s) for s in patch_size)
    name = name or bank_name(architecture, CONTROL_SOURCE)
    spec = spec or small_spec(architecture, in_channels, out_channels, patch)
    wanted = _control_tags(spec, bank, seed, patch)
    if reuse and (existing := find_version(name, wanted)) is not None:
        return existing
    state = seeded_network(spec, seed).state_dict()
    return register_network(
        spec,
        state,
        name,
        CONTROL_SOURCE,
        bank=bank,
        patch_size=patch,
        extra_tags={
            **{k: v for k, v in wanted.items() if k.startswith(T.pretrain_tag(""))},  # steps, seed, spec
            **({T.IMPORT_NORMALIZATION: normalization} if normalization else {}),
        },
        description=f"{architecture}, randomly initialised (seed {seed}): the control",
    )


def _control_tags(spec: NetworkSpec, bank: str, seed: int, patch: Sequence[int]) -> dict[str, str]:
    """The tags that identify a random-init control: same tags, same network and weights."""
    return {
        T.SOURCE_DATASET: CONTROL_SOURCE,
        T.BANK: bank,
        T.pretrain_tag("steps"): "0",
        T.pretrain_tag("seed"): str(seed),
        T.PATCH_SIZE: format_ints(patch),
        T.pretrain_tag("spec"): T.spec_digest(spec.to_json()),
    }


def _twin_key(version: ModelVersion) -> tuple[str, ...] | None:
    """What makes two twins the same (name and the identifying tags); None for a version that is not one."""
    tags = version.tags or {}
    if tags.get(T.SOURCE_DATASET) != CONTROL_SOURCE or not tags.get(T.pretrain_tag("spec")):
        return None
    keys = (T.BANK, T.pretrain_tag("seed"), T.PATCH_SIZE, T.NETWORK)
    return (version.name, *(str(tags.get(k)) for k in keys))


def drop_duplicate_twins(versions: Sequence[ModelVersion]) -> list[ModelVersion]:
    """``versions`` without the twins registered twice by scorers that raced (every one but the oldest
    of the same name, bank, seed, patch and network; :func:`register_twins` deletes the newer one, this
    keeps a listing made before that deletion from scoring it)."""
    oldest: dict[tuple[str, ...], int] = {}
    for v in versions:
        key = _twin_key(v)
        if key is not None:
            oldest[key] = min(oldest.get(key, int(v.version)), int(v.version))
    return [v for v in versions if (key := _twin_key(v)) is None or int(v.version) == oldest[key]]


def network_of(version: ModelVersion) -> tuple[str | None, NetworkSpec | None]:
    """A version's network identity (tag ``ccfv.network``) and, when it had to be loaded to compute it,
    its spec. A version registered before the tag existed is loaded once and tagged (its identity is a
    function of its spec and patch size); one without a spec (``mlflow.pytorch``) has none."""
    tags = version.tags or {}
    if tags.get(T.NETWORK):
        return tags[T.NETWORK], None
    if tags.get(T.FLAVOR, FLAVOR_NAME) != FLAVOR_NAME:
        return None, None
    spec = load_version(version).spec
    if spec is None:
        return None, None
    patch = parse_ints(tags[T.PATCH_SIZE], T.PATCH_SIZE) if tags.get(T.PATCH_SIZE) else DEFAULT_PATCH_SIZE
    identity = network_identity(spec.architecture, spec.kwargs, patch, tags.get(T.IMPORT_NORMALIZATION))
    set_version_tag(version.name, str(version.version), T.NETWORK, identity)
    return identity, spec


def register_twins(versions: Sequence[ModelVersion], *, seed: int = TWIN_SEED) -> list[ModelVersion]:
    """The random-init twin of every network among ``versions`` that has no control in its bank among
    them (``ccfv_twin``'s reference; no training). A twin is the network of the first version (by name
    and version) of its identity (:func:`~mlflow_ccfv.scoring.ranking.network_identity`: every
    constructor argument but the output channels, and the patch size), with random weights drawn from
    ``seed``, registered in that version's bank as ``<architecture>-random-init`` (an existing twin of the
    same identity, bank and seed is reused). Versions without a network specification (``mlflow.pytorch``)
    give none; one that fails to load is passed over (its scoring reports why). Safe when scorers race:
    each keeps the oldest twin of an identity and deletes the copy it made, if any
    (:func:`drop_duplicate_twins` for listings). Returns the twins, registered or reused."""
    by_network: dict[tuple[str, str], list[ModelVersion]] = {}
    controlled: set[tuple[str, str]] = set()
    specs: dict[tuple[str, str], NetworkSpec] = {}  # (name, version) -> spec loaded to compute its identity
    for v in sorted(versions, key=lambda mv: (mv.name, int(mv.version))):
        try:
            identity, known = network_of(v)
        except Exception as exc:  # a broken version: its own scoring reports it
            _logger.warning("random-init twin: %s/%s does not load (%s)", v.name, v.version, exc)
            continue
        if identity is None:
            continue
        if known is not None:
            specs[(v.name, str(v.version))] = known
        key = ((v.tags or {}).get(T.BANK, DEFAULT_BANK), identity)
        if _is_control(v):
            controlled.add(key)
        else:
            by_network.setdefault(key, []).append(v)
    twins = []
    for (bank, identity), candidates in sorted(by_network.items()):
        if (bank, identity) in controlled:
            continue
        for v in candidates:
            try:
                spec = specs.get((v.name, str(v.version))) or load_version(v).spec
            except Exception as exc:  # a broken version: its own scoring reports it; try the next one
                _logger.warning("random-init twin: %s/%s does not load (%s)", v.name, v.version, exc)
                continue
            if spec is None:
                continue
            tags = v.tags or {}
            patch = parse_ints(tags[T.PATCH_SIZE], T.PATCH_SIZE) if tags.get(T.PATCH_SIZE) else DEFAULT_PATCH_SIZE
            name = bank_name(spec.architecture, CONTROL_SOURCE)
            wanted = {
                T.SOURCE_DATASET: CONTROL_SOURCE,
                T.BANK: bank,
                T.pretrain_tag("seed"): str(seed),
                T.NETWORK: identity,
            }
            same = find_versions(name, wanted)
            if same:
                twin = same[0]
            else:
                mine = register_control(
                    spec.architecture,
                    spec.in_channels,
                    spec.out_channels,
                    patch,
                    bank=bank,
                    seed=seed,
                    spec=spec,
                    reuse=False,
                    normalization=tags.get(T.IMPORT_NORMALIZATION),
                )
                # No conditional create in MLflow: a scorer racing this one may have registered the same
                # twin meanwhile. Every scorer keeps the oldest; the one that made a newer copy deletes it.
                twin = find_versions(name, wanted)[0]
                if str(twin.version) != str(mine.version):
                    _logger.info(
                        "%s/%s: registered twice by concurrent scorers; keeping version %s",
                        name,
                        mine.version,
                        twin.version,
                    )
                    delete_version(name, str(mine.version))
            _logger.info(
                "random-init twin of %s/%s (network %s): %s/%s (its network with random weights, seed %d; no training)",
                v.name,
                v.version,
                identity,
                twin.name,
                twin.version,
                seed,
            )
            twins.append(twin)
            break
    return twins


def _is_control(version: ModelVersion) -> bool:
    return (version.tags or {}).get(T.SOURCE_DATASET) == CONTROL_SOURCE
