"""Which modules of a MONAI segmentation network are its decoder stages, and which is its output head.

CC-FV (Eq. 5) averages over the D decoder layers of a network; the baselines (LogME, GBC,
TransRate, LEEP ...) take "the layer before the final convolution". :func:`decoder_layers` finds
both from the architecture's structure (module types and how they are nested), so it works for
any depth or width of the supported MONAI networks and nnU-Net's U-Nets:

===========  ==========================================================  ======================
network      decoder stages (bottleneck -> output)                       output head
===========  ==========================================================  ======================
UNet         the up blocks of the nested ``SkipConnection``s, innermost   ``model.2`` (top up
             first; the last stage is the outermost ``SkipConnection``    block: transposed
             ``model.1`` (encoder skip ⊕ first up block) = head input     conv [+ residual unit])
BasicUNet    the ``UpCat`` blocks ``upcat_4 ... upcat_1``                 ``final_conv``
DynUNet      ``upsamples.*`` in the order the skip chain runs them        ``output_block``
UNETR        the ``UnetrUpBlock``s ``decoder5 ... decoder2``              ``out``
SwinUNETR    the ``UnetrUpBlock``s ``decoder5 ... decoder1``              ``out``
SegResNet    ``up_layers.*`` (each after its upsample + skip sum)         ``conv_final``
SegResNetDS  ``up_layers.*.blocks``                                       ``up_layers[-1].head``
===========  ==========================================================  ======================

nnU-Net's ``PlainConvUNet`` and ``ResidualEncoderUNet`` (``dynamic_network_architectures``): the
stages ``decoder.stages.*`` (transposed conv ⊕ skip, then convolutions), head
``decoder.seg_layers.<last>``; deep supervision must be off (specs built here always turn it off).

In every case the last stage's output is exactly the head's input.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mlflow_ccfv.networks.specs import SUPPORTED_ARCHITECTURES

__all__ = ["decoder_layers", "output_head", "resolve_layers"]


def _names_of(model: nn.Module) -> dict[int, str]:
    """``id(module) -> name`` (the first name ``named_modules`` gives a module shared under two names)."""
    return {id(m): n for n, m in model.named_modules()}


def _unet_stages(model: nn.Module) -> tuple[list[str], str]:
    from monai.networks.layers.simplelayers import SkipConnection

    names = _names_of(model)
    node = model.model
    ups: list[nn.Module] = []  # outermost first
    skips: list[nn.Module] = []
    # MONAI's UNet nests Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up).
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        ups.append(node[2])
        skips.append(node[1])
        node = node[1].submodule
    if not ups:
        raise ValueError("This UNet does not have MONAI's nested SkipConnection structure; pass `layers` explicitly.")
    head = ups[0]
    # The head (top up block) reads the outermost SkipConnection's output, i.e. the first up block's
    # output concatenated with the first encoder block's: that concatenation replaces the first up block.
    stages = [names[id(m)] for m in reversed(ups[2:])] + [names[id(skips[0])]]
    return stages, names[id(head)]


def _basicunet_stages(model: nn.Module) -> tuple[list[str], str]:
    from monai.networks.nets.basic_unet import UpCat

    names = [n for n, m in model.named_children() if isinstance(m, UpCat)]
    return names, "final_conv"


def _dynunet_stages(model: nn.Module) -> tuple[list[str], str]:
    from monai.networks.nets.dynunet import DynUNetSkipLayer

    names = _names_of(model)
    chain: list[nn.Module] = []  # top (output side) first
    node = model.skip_layers
    while isinstance(node, DynUNetSkipLayer):
        chain.append(node.upsample)
        node = node.next_layer
    return [names[id(m)] for m in reversed(chain)], "output_block"


def _unetr_stages(model: nn.Module) -> tuple[list[str], str]:
    from monai.networks.blocks.unetr_block import UnetrUpBlock

    # UNETR/SwinUNETR register their decoders in the order forward() runs them (decoder5 first).
    names = [n for n, m in model.named_children() if isinstance(m, UnetrUpBlock)]
    return names, "out"


def _segresnet_stages(model: nn.Module) -> tuple[list[str], str]:
    if not model.use_conv_final:
        raise ValueError("This SegResNet has use_conv_final=False (no output head); pass `layers` explicitly.")
    n = len(list(model.get_submodule("up_layers").children()))
    return [f"up_layers.{i}" for i in range(n)], "conv_final"


def _segresnetds_stages(model: nn.Module) -> tuple[list[str], str]:
    # Each level is upsample -> (+ skip) -> blocks -> head; in eval mode the last level's head is the output.
    n = len(list(model.get_submodule("up_layers").children()))
    return [f"up_layers.{i}.blocks" for i in range(n)], f"up_layers.{n - 1}.head"


def _dynamic_unet_stages(model: nn.Module) -> tuple[list[str], str]:
    decoder = model.get_submodule("decoder")
    if decoder.deep_supervision:
        raise ValueError(
            f"This {type(model).__name__} returns deep-supervision outputs; set "
            "model.decoder.deep_supervision = False before scoring."
        )
    n = len(list(decoder.get_submodule("stages").children()))
    return [f"decoder.stages.{i}" for i in range(n)], f"decoder.seg_layers.{n - 1}"


_RULES = {
    "UNet": _unet_stages,
    "BasicUNet": _basicunet_stages,
    "DynUNet": _dynunet_stages,
    "UNETR": _unetr_stages,
    "SwinUNETR": _unetr_stages,
    "SegResNet": _segresnet_stages,
    "SegResNetDS": _segresnetds_stages,
    "PlainConvUNet": _dynamic_unet_stages,
    "ResidualEncoderUNet": _dynamic_unet_stages,
}


def _architecture(model: nn.Module) -> str:
    import monai.networks.nets as nets

    from mlflow_ccfv.networks.dynamic import dynamic_architecture_of

    # SegResNetDS2 subclasses SegResNetDS but adds a second decoder: match the class exactly there.
    for arch in SUPPORTED_ARCHITECTURES:
        cls = getattr(nets, arch)
        if type(model) is cls or (isinstance(model, cls) and arch != "SegResNetDS"):
            return arch
    dynamic = dynamic_architecture_of(model)
    if dynamic is not None:
        return dynamic
    raise ValueError(
        f"Cannot find the decoder stages of a {type(model).__name__}: supported MONAI networks are "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}. Pass `layers=[...]` with module names from "
        "`dict(model.named_modules())` instead."
    )


def decoder_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s decoder-stage modules, ordered from the bottleneck to the output.

    The last name is the module whose output feeds the output head (the baselines' "layer before
    the final convolution"). Names index ``dict(model.named_modules())``.
    """
    stages, _ = _RULES[_architecture(model)](model)
    if not stages:
        raise ValueError(f"Found no decoder stages in this {type(model).__name__}; pass `layers` explicitly.")
    return stages


def output_head(model: nn.Module) -> str:
    """Name of the module producing ``model``'s logits (the block re-initialised when fine-tuning)."""
    _, head = _RULES[_architecture(model)](model)
    return head


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    """``{name: module}`` for ``layers`` (default :func:`decoder_layers`), in the given order.

    An unknown name raises ``ValueError`` listing the available module names.
    """
    if layers is None:
        layers = decoder_layers(model)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("`layers` is empty: name at least one module, or pass None for the decoder stages.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"`layers` names a module twice: {layers}.")
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules or n == ""]
    if unknown:
        available = [n for n in modules if n]
        raise ValueError(
            f"{type(model).__name__} has no module(s) named {', '.join(map(repr, unknown))}. "
            f"Available names: {', '.join(available)}."
        )
    return {n: modules[n] for n in layers}
