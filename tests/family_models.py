"""Small models of each segmentation and detection family, seeded, in eval mode: the
same classes as torchvision's and Hugging Face's (so the same family and layer rules
apply), with small backbones so that a forward and backward pass takes milliseconds."""

from __future__ import annotations

import functools

import torch
from torch import nn


def tiny_segformer(**options) -> nn.Module:
    """A SegFormer with four one-block stages of 8 to 32 channels and 4 classes."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=4,
        **options,
    )
    return SegformerForSemanticSegmentation(config).eval()


def _small_dilated_features() -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(dilated=True).features  # 13 blocks, the last at stride 16


def _small_fpn(layers: list[str], extra_blocks: nn.Module | None) -> nn.Module:
    """ResNet-18 with a 32-channel FPN on the given stages, and the extra levels given
    (None: none, where torchvision would add a max-pooled one)."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    channels = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    returned = {layer: str(i) for i, layer in enumerate(layers)}
    in_channels = [channels[layer] for layer in layers]
    backbone = BackboneWithFPN(resnet18(), returned, in_channels, 32, extra_blocks=extra_blocks)
    if extra_blocks is None:
        backbone.fpn.extra_blocks = None  # the FPN then returns the stages' levels only
    return backbone


@functools.cache
def tiny(name: str) -> nn.Module:
    """The small model of one family (built once per test run: the library leaves a model
    as it found it, which test_families checks)."""
    from torchvision.models import detection
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead
    from torchvision.models.segmentation.lraspp import LRASPP
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    if name == "fcn":
        model = FCN(
            IntermediateLayerGetter(_small_dilated_features(), {"12": "out"}), FCNHead(576, 4)
        )
    elif name == "deeplabv3":
        backbone = IntermediateLayerGetter(_small_dilated_features(), {"12": "out"})
        model = DeepLabV3(backbone, DeepLabHead(576, 4))
    elif name == "lraspp":
        backbone = IntermediateLayerGetter(_small_dilated_features(), {"3": "low", "12": "high"})
        model = LRASPP(backbone, 24, 576, 4, inter_channels=32)
    elif name == "segformer":
        model = tiny_segformer()
        # transformers 5 adds its own output-capturing hooks to a model on its first
        # forward pass, and keeps them: run it once, so that "no hook added" sees them.
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    elif name == "fasterrcnn":
        # Thresholds lowered so that random weights detect something (a user sets the same
        # attributes: model.roi_heads.score_thresh, docs/targets.md); a 64-wide box head
        # instead of 1024 (12 M weights).
        model = detection.fasterrcnn_mobilenet_v3_large_fpn(
            weights=None,
            weights_backbone=None,
            rpn_pre_nms_top_n_test=50,
            rpn_post_nms_top_n_test=20,
            box_score_thresh=0.0,
            box_detections_per_img=10,
        )
        model.roi_heads.box_head = TwoMLPHead(model.backbone.out_channels * 7 * 7, 64)
        model.roi_heads.box_predictor = FastRCNNPredictor(64, 5)
    elif name == "retinanet":
        levels = _small_fpn(["layer2", "layer3", "layer4"], LastLevelP6P7(32, 32))
        model = detection.RetinaNet(levels, num_classes=5, score_thresh=0.0)
    elif name == "fcos":
        # Levels P2..P5 instead of P3..P7: FCOS's GroupNorm head refuses the 1 x 1 map of
        # one image that P7 is below 129 pixels a side (the reference runs one at a time).
        levels = _small_fpn(["layer1", "layer2", "layer3", "layer4"], None)
        anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
        model = detection.FCOS(levels, num_classes=5, anchor_generator=anchors, score_thresh=0.0)
        # Random regressions make slivers that no two scales agree on; a trained FCOS
        # predicts boxes about its anchors' size, which a bias of 1 gives.
        nn.init.constant_(model.head.regression_head.bbox_reg.bias, 1.0)
    elif name == "ssdlite":
        model = detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=5, score_thresh=0.0
        )
    else:
        raise KeyError(name)
    return model.eval()


SEGMENTERS = ["fcn", "deeplabv3", "lraspp", "segformer"]
DETECTORS = ["fasterrcnn", "retinanet", "fcos", "ssdlite"]
