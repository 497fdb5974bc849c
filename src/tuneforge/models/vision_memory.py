"""Memory of LoRA training of an image classifier (data_config.task 'image_classification'), term by term.

The same `MemoryEstimate` as a causal LM's (models/memory.py), from a `VisionShape` read off the model built on the
meta device (no weights, no download):

- weights, LoRA weights, their gradients and optimizer state, overhead: as for a causal LM (`ModelShape` fields, the
  same code), with the vision specifics: on the CPU the frozen nn.Linear weights are stored in the compute dtype and
  every Conv2d weight stays fp32 (models/lora.load_base_model), so autocast makes a compute-dtype copy of each conv
  weight per forward, which autograd keeps (`workspace`, as for GPT-2's Conv1D). LoRA on a Conv2d (ResNet) adds
  r x (in x kh x kw) + r x out parameters (PEFT's lora_A is a conv of the same kernel, lora_B a 1x1 conv).
- the head, new and trained fully (PEFT modules_to_save): PEFT keeps the frozen original and a trainable fp32 copy,
  whose gradient and optimizer state count like LoRA's.
- activations. ViT/DeiT: a transformer encoder over (image_size / patch_size)^2 + 1 tokens (the patches and
  [CLS]), bidirectional; the causal LM's per-token-and-layer accounting applies unchanged (no mask is stored with
  SDPA either way). ConvNeXt/ResNet: per image, what autograd keeps grows with each stage's feature map (channels x
  H x W from the config's `hidden_sizes`, `depths`, `embedding_size` and the image side): a bytes-per-element
  coefficient per block and one for the stem, measured with torch.autograd.graph.saved_tensors_hooks on
  tuneforge's own load path (tests/models/test_vision_memory.py re-measures them on other shapes).
- logits: batch x labels, negligible: 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from .memory import (
    _DTYPE_BYTES,
    CPU_ALLOCATOR_FACTOR,
    OPTIMIZER_STATE_BYTES,
    MemoryEstimate,
    ModelShape,
    TrainingSetup,
    estimate_training_memory,
)
from .targets import IMAGE_TARGET_MODULES

# Bytes autograd keeps per image and feature-map element (channels x H x W of a block's output; of the stem's
# output for the stem), LoRA on the default targets, bf16 autocast on the CPU (fp32 norms and residual stream).
# Measured on 2-stage random models at 64 x 64 (slope between batch 2 and 4, weights excluded): a ResNet basic block
# keeps ~13 (its two convs' LoRA inputs, the batch norms' and ReLUs' tensors), a ConvNeXt block ~23 (its 4x wide
# pointwise MLP); the ResNet stem (7x7 conv, batch norm, ReLU, max-pool indices) ~12 per element of its output, the
# ConvNeXt stem (4x4 patchify, layer norm) ~2. A bottleneck block (ResNet-50) keeps about what a basic block of the
# same output width does: its 1x1-3x3 convs run at a quarter of the width.
CNN_BLOCK_BYTES = {"resnet": 13.0, "convnext": 23.0}
CNN_STEM_BYTES = {"resnet": 12.2, "convnext": 2.1}
# All of it in fp32 (precision fp32) over bf16, measured on the same models: the norms were fp32 already.
CNN_FP32_SCALE = {"resnet": 1.5, "convnext": 1.9}


@dataclass(frozen=True)
class VisionShape:
    """What the image-classification estimate needs to know about a model."""

    backbone: ModelShape  # parameters, LoRA dims, and for ViT/DeiT the encoder layer (model_type, widths)
    image_size: int  # side of the (square) images the processor feeds the model
    head_params: int  # the classification head at `num_labels` outputs (weights and biases)
    num_labels: int
    tokens: int = 0  # ViT/DeiT: patches + [CLS]; 0 for CNNs
    stem_elements: int = 0  # CNNs: channels x H x W of the stem's output, per image
    block_elements: int = 0  # CNNs: sum over blocks of channels x H x W of the block's output, per image

    @property
    def params(self) -> int:
        return self.backbone.params

    @classmethod
    def from_config(cls, config, *, image_size: int | None = None, num_labels: int | None = None) -> VisionShape:
        """Build the classifier on the meta device and read its shape; `image_size` defaults to the config's (224 for
        configs without one, such as ResNet's), `num_labels` to the config's head."""
        size = int(image_size or getattr(config, "image_size", None) or 224)
        labels = int(num_labels or config.num_labels)
        data = config.to_dict()
        data.update(num_labels=labels, id2label=None, label2id=None)
        return _vision_shape(config.model_type, _json(data), size)


def _json(data: dict) -> str:
    import json

    return json.dumps({k: v for k, v in data.items() if k not in ("id2label", "label2id")}, sort_keys=True)


@lru_cache(maxsize=64)
def _vision_shape(model_type: str, config_json: str, image_size: int) -> VisionShape:
    import json
    import warnings

    import torch
    import torch.nn as nn
    from transformers import AutoConfig, AutoModelForImageClassification

    from .loader import transformers_warnings_off

    data = json.loads(config_json)
    data.pop("model_type", None)
    config = AutoConfig.for_model(model_type, **data)
    with transformers_warnings_off(), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = AutoModelForImageClassification.from_config(config)
    from .classifier import head_modules

    heads = [getattr(model, name) for name in head_modules(model)]
    head_ids = {id(m) for head in heads for m in head.modules()}
    head_params = sum(p.numel() for head in heads for p in head.parameters())
    params = sum(p.numel() for p in model.parameters())
    linear = conv = 0
    lora_dims: dict[str, int] = {}
    layer_linears: dict[str, tuple[int, int]] = {}
    layers = getattr(getattr(model, model.base_model_prefix), "layers", None)  # ViT/DeiT's encoder blocks
    first_layer = {id(m) for m in layers[0].modules()} if isinstance(layers, nn.ModuleList) else set()
    for name, module in model.named_modules():
        if id(module) in head_ids:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear):
            linear += module.in_features * module.out_features
            lora_dims[leaf] = lora_dims.get(leaf, 0) + module.in_features + module.out_features
            if id(module) in first_layer:
                old_in, old_out = layer_linears.get(leaf, (0, 0))
                layer_linears[leaf] = (old_in + module.in_features, old_out + module.out_features)
        elif isinstance(module, nn.Conv2d):
            conv += module.weight.numel()
            kh, kw = module.kernel_size
            lora_dims[leaf] = lora_dims.get(leaf, 0) + module.in_channels * kh * kw + module.out_channels

    transformer = model_type in ("vit", "deit")
    tokens = (image_size // int(config.patch_size)) ** 2 + 1 if transformer else 0
    stem, blocks = _feature_map_elements(config, image_size) if not transformer else (0, 0)
    backbone = ModelShape(
        model_type=model_type,
        params=int(params),
        quantizable_params=int(linear),
        linear_params=int(linear),
        untied_head_params=0,
        largest_linear=0,
        lora_dims=dict(sorted(lora_dims.items())),
        expert_lora_dims={},
        default_targets=tuple(IMAGE_TARGET_MODULES.get(model_type, ())),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0) if transformer else 0,
        num_layers=int(config.num_hidden_layers) if transformer else 0,
        vocab_size=0,  # no token logits: the head's batch x labels logits are negligible
        layer_linears=dict(sorted(layer_linears.items())),
        attention_heads=int(getattr(config, "num_attention_heads", 0) or 0) if transformer else 0,
        attention_dropout=float(getattr(config, "attention_probs_dropout_prob", 0.0) or 0.0) if transformer else 0.0,
        conv1d_params=int(conv),  # fp32 on the CPU under a compute-dtype autocast, like GPT-2's Conv1D
    )
    return VisionShape(
        backbone=backbone,
        image_size=image_size,
        head_params=int(head_params),
        num_labels=int(labels) if (labels := config.num_labels) is not None else 0,
        tokens=tokens,
        stem_elements=stem,
        block_elements=blocks,
    )


def _feature_map_elements(config, image_size: int) -> tuple[int, int]:
    """(stem output, sum over blocks of block outputs) in channels x H x W per image, for ResNet and ConvNeXt."""
    if config.model_type == "resnet":
        # 7x7 stride-2 conv, then a stride-2 max-pool; stage 0 keeps the side unless downsample_in_first_stage.
        side = -(-image_size // 2)
        stem = int(config.embedding_size) * side * side
        side = -(-side // 2)
        first_stride = 2 if getattr(config, "downsample_in_first_stage", False) else 1
    else:
        # ConvNeXt: a patch_size x patch_size stride-patch_size "patchify" conv; stage 0 keeps the side.
        side = image_size // int(getattr(config, "patch_size", 4) or 4)
        stem = int(config.hidden_sizes[0]) * side * side
        first_stride = 1
    blocks = 0
    for i, (width, depth) in enumerate(zip(config.hidden_sizes, config.depths, strict=True)):
        stride = first_stride if i == 0 else 2
        side = -(-side // stride)
        blocks += int(depth) * int(width) * side * side
    return stem, blocks


def estimate_image_training_memory(shape: VisionShape, setup: TrainingSetup | None = None, **changes) -> MemoryEstimate:
    """Peak memory of LoRA training of an image classifier (`setup.seq_len` is ignored: the image size and, for
    ViT/DeiT, the token count come from the shape). QLoRA is not offered for image classification (the spec
    refuses it), so the estimate is LoRA's whatever `setup.method` says."""
    s = dataclasses.replace(setup or TrainingSetup(), **changes)
    s = dataclasses.replace(s, method="lora", seq_len=max(shape.tokens, 1))
    b = shape.backbone
    if not shape.tokens and s.gradient_checkpointing:
        s = dataclasses.replace(s, gradient_checkpointing=False)  # ResNet/ConvNeXt do not support it (models/lora.py)
    base = estimate_training_memory(b, s)
    compute = _DTYPE_BYTES[s.precision]
    on_cpu = s.device == "cpu"
    # The head: PEFT's modules_to_save trains an fp32 copy beside the frozen original (counted in the weights).
    head = shape.head_params
    activations = float(base.activations)
    if not shape.tokens:
        arch = b.model_type
        per_image = CNN_BLOCK_BYTES[arch] * shape.block_elements + CNN_STEM_BYTES[arch] * shape.stem_elements
        if s.precision == "fp32":
            per_image *= CNN_FP32_SCALE[arch]
        activations = s.batch_size * per_image * (CPU_ALLOCATOR_FACTOR if on_cpu else 1)
    # The pixel batch: fp32 from the processor, cast to the compute dtype by the first conv under autocast.
    activations += s.batch_size * 3 * shape.image_size**2 * (4 + (compute if compute != 4 else 0))
    return dataclasses.replace(
        base,
        lora=base.lora + head * 4,
        gradients=base.gradients + head * 4 * (2 if s.world_size > 1 else 1),
        optimizer=base.optimizer + head * OPTIMIZER_STATE_BYTES[s.optimizer],
        activations=int(activations),
        logits=0,
        trainable_params=base.trainable_params + head,
        setup=s,
    )
