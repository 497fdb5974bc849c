"""The job spec: MonsterAPI's fine-tune payload, unchanged, plus tuneforge's optional extensions.

A payload that the official `monsterapi` client sends (`client.finetune("llm", params)`) validates here as is:
same section names, same field names, same meanings. Fields that tuneforge adds are optional and marked
"(tuneforge)" in their help. Every section forbids unknown fields, so a typo such as `lora_alpah` is an error
naming the field instead of a silently ignored setting.

The field descriptions are the documentation: the CLI's `tuneforge spec --help-fields`, the API's OpenAPI page
and the UI's help texts are all generated from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import TuneforgeError, did_you_mean

# data_format: "auto" (detect), or one of the data formats data/formats.py reads (its RowFormat classes implement
# each). Listed once: FORMATS is derived from it.
DataFormat = Literal[
    "auto",
    "template",
    "chat",
    "sharegpt",
    "chat_prompt_completion",
    "prompt_completion",
    "alpaca",
    "text",
    "preference",
]
FORMATS: tuple[str, ...] = get_args(DataFormat)[1:]
# What each data_format value reads: the field's description and the data layer's errors list them.
FORMAT_HELP = {
    "template": "prompt_template over the row's columns",
    "chat": "OpenAI chat: 'messages' of {role, content} (+ tool_calls, weight, 'tools')",
    "sharegpt": "ShareGPT: 'conversations' of {from, value} (+ 'system', 'tools')",
    "chat_prompt_completion": "TRL conversational: 'prompt' and 'completion' as lists of messages",
    "prompt_completion": "'prompt' and 'completion' text",
    "alpaca": "Alpaca: 'instruction', 'input', 'output' (+ 'system', 'history')",
    "text": "one 'text' column, learned whole",
    "preference": "pairs for preference tuning: 'prompt'/'chosen'/'rejected' (text or message lists), or OpenAI's "
    "DPO 'input'/'preferred_output'/'non_preferred_output' (a prompt_template renders the prompt)",
}

# Upper bound of the counts and lengths below: larger values mean nothing to training, and reach int32/int64
# arithmetic in torch, numpy and the database where they would fail in the queue instead of at the door.
MAX_INT32 = 2**31 - 1

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
)

# data_config.task: what the model learns. causal_lm (MonsterAPI's only task) is the default, so MonsterAPI payloads
# are unchanged; classification trains a sequence-classification head (train/tasks.py); image_classification an
# image-classification head on a vision model (data/images.py, models/classifier.py); seq2seq trains an
# encoder-decoder (T5, BART) to write label_column's text from text_column's (train/seq2seq.py).
Task = Literal["causal_lm", "classification", "image_classification", "seq2seq"]
# The tasks that train a new classification head over labels read from data_config.label_column.
CLASSIFIER_TASKS = ("classification", "image_classification")
GGUFType = Literal["f16", "q8_0"]  # the GGUF weight types `tuneforge export` and the export route offer
TASKS: tuple[str, ...] = get_args(Task)

PreferenceMethod = Literal["orpo", "dpo", "simpo"]
PREFERENCE_METHODS: tuple[str, ...] = get_args(PreferenceMethod)
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0}  # TRL's DPO default; SimPO paper's recommended range starts at 2.0


class _Section(BaseModel):
    # extra="forbid": an unknown field is an error that names it. protected_namespaces=(): allow `model_path`.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


class PretrainedModelConfig(_Section):
    model_path: str = Field(
        DEFAULT_MODEL,
        description="Base model: a Hugging Face hub id, a local Hugging Face model folder, or a catalog alias "
        "such as 'smollm2-135m'.",
    )
    resume_checkpoint_path: str = Field(
        "",
        description="Continue training from this checkpoint folder (a `checkpoint-N` folder of an earlier run) "
        "or from an adapter folder. Empty: start fresh.",
    )
    use_lora: bool = Field(True, description="Train a LoRA adapter. Full fine-tuning is not offered: must be true.")
    lora_r: int = Field(
        8, gt=0, lt=2048, description="LoRA rank r: the adapter adds r*(m+n) parameters per m*n weight."
    )
    lora_alpha: int = Field(
        16, gt=0, lt=2048, description="LoRA scaling numerator: the update B·A is scaled by alpha/r."
    )
    lora_dropout: float = Field(
        0.0, ge=0.0, le=1.0, description="Dropout on the LoRA input path (0 disables it and saves activation memory)."
    )
    lora_bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases train: none, all of the model's, or only those of LoRA-wrapped layers."
    )
    use_quantization: bool = Field(
        False,
        description="QLoRA: load the frozen base model in 4-bit (NF4 with double quantization by default) with "
        "bitsandbytes and train the LoRA adapter on top; paged AdamW on CUDA.",
    )
    use_gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about 30% more compute."
    )
    parallelization: Literal["nmp"] = Field("nmp", description="MonsterAPI's parallelization mode; only 'nmp' exists.")
    # --- tuneforge extensions -------------------------------------------------------------------------------------
    target_modules: list[str] | None = Field(
        None,
        description="(tuneforge) Module names that get LoRA adapters, e.g. ['q_proj', 'v_proj']. Default: the "
        "attention and MLP projections of the model's architecture.",
    )
    quantization_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="(tuneforge) 4-bit data type for QLoRA: nf4 (NormalFloat, from the QLoRA paper) or fp4."
    )
    double_quantization: bool = Field(
        True, description="(tuneforge) QLoRA: also quantize the quantization constants (saves ~0.4 bit per weight)."
    )

    @field_validator("use_lora")
    @classmethod
    def _lora_only(cls, v: bool) -> bool:
        if not v:
            raise ValueError("full fine-tuning (use_lora=false) is not supported by tuneforge; set use_lora to true")
        return v

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not m.strip() for m in v)):
            raise ValueError("must name at least one module, without empty names")
        return v


class DataConfig(_Section):
    data_path: str = Field(
        ...,
        description="Training data: a local .json/.jsonl/.csv/.parquet file or datasets folder, a Hugging Face "
        "dataset id, or an http(s) URL to a file.",
    )
    data_subset: str | None = Field(None, description="Dataset configuration (subset) name on the hub, if any.")
    data_source_type: Literal["hub_link", "s3_presigned_link"] = Field(
        "hub_link",
        description="MonsterAPI's hint of where data_path points; tuneforge detects the kind from data_path itself.",
    )
    prompt_template: str | None = Field(
        None,
        description="How a row becomes text: '{column}' placeholders are filled from the row; the last placeholder "
        "is the completion the model learns, everything before it the prompt. '{{' and '}}' are literal braces. "
        "Empty: use a 'messages', 'prompt'/'completion' or 'text' column.",
    )
    cutoff_len: int = Field(
        512, gt=0, le=MAX_INT32, description="Maximum tokens per example; longer examples are truncated."
    )
    data_split_config: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.9, "validation": 0.1},
        description="Fractions of the rows used for training, validation and (optionally) held-out testing, e.g. "
        "{'train': 0.8, 'validation': 0.1, 'test': 0.1}. Test rows never touch training or early stopping: after "
        "training the base model and the adapter answer them and are scored side by side.",
    )
    prevalidated: bool = Field(
        False,
        description="MonsterAPI's flag to skip server-side validation; tuneforge always validates (it is cheap) "
        "and accepts the flag for compatibility.",
    )
    # --- tuneforge extensions -------------------------------------------------------------------------------------
    data_split: str | None = Field(
        None, description="(tuneforge) Split to read from a hub dataset or datasets folder (default: 'train')."
    )
    validation_data_path: str | None = Field(
        None, description="(tuneforge) Separate validation data (same kinds as data_path); then no split is taken."
    )
    test_data_path: str | None = Field(
        None,
        description="(tuneforge) Separate held-out test data (same kinds and format as data_path): evaluated after "
        "training, base model vs adapter; then no 'test' split is taken from data_path.",
    )
    data_format: DataFormat = Field(
        "auto",
        description="(tuneforge) Row shape: "
        + "; ".join(f"{k} = {v}" for k, v in FORMAT_HELP.items())
        + ". auto: template when prompt_template is given, else detected from the columns (a structured format "
        "wins over a 'text' column, which is then ignored and reported); preference whenever the job trains with a "
        "preference method.",
    )
    completion_column: str | None = Field(
        None,
        description="(tuneforge) The template column that is the completion; default: the template's last placeholder.",
    )
    train_on_inputs: bool = Field(
        False, description="(tuneforge) Compute the loss on the prompt too, not only on the completion."
    )
    task: Task = Field(
        "causal_lm",
        description="(tuneforge) What the model learns: causal_lm (generate text: every field above applies), "
        "classification (one label per text with a sequence-classification head on an encoder such as BERT or a "
        "decoder such as Llama; the labels are read from label_column, strings or integers), "
        "image_classification (one label per image with an image-classification head on a vision model such as "
        "ViT, DeiT, ConvNeXt or ResNet; data_path is a folder with one subfolder per class, or a file with "
        "image_column and label_column) or seq2seq (an encoder-decoder such as T5, Flan-T5 or BART reads "
        "text_column and learns to write label_column; the loss is on the target only; a task prefix such as "
        "'translate English to German: ' belongs in text_column's text).",
    )
    text_column: str = Field(
        "text", description="(tuneforge) classification: the column holding the text; seq2seq: the source text."
    )
    label_column: str = Field(
        "label",
        description="(tuneforge) classification, image_classification: the column holding the label; seq2seq: the "
        "target text.",
    )
    image_column: str = Field(
        "image",
        description="(tuneforge) image_classification: the column holding the image: a path (relative to the data "
        "file, or absolute), image bytes, or a Hugging Face datasets Image value {bytes, path}.",
    )

    image_augmentation: bool = Field(
        False,
        description="(tuneforge) image_classification: flip and crop training images at random (a horizontal flip, "
        "80-100% crops) before the model's image processor; validation and test images are never augmented.",
    )

    @field_validator("text_column", "label_column", "image_column")
    @classmethod
    def _column_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a column")
        return v

    @field_validator("data_path")
    @classmethod
    def _path_non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty: give a file, folder, hub dataset id or URL")
        return v.strip()

    @field_validator("data_split_config")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = {"train", "validation", "test"}
        for key, frac in v.items():
            if key not in allowed:
                raise ValueError(f"unknown split {key!r}{did_you_mean(key, allowed)}; allowed: train, validation, test")
            if not 0.0 <= frac <= 1.0:
                raise ValueError(f"{key} fraction {frac} must be between 0 and 1")
        if "train" not in v or v["train"] <= 0:
            raise ValueError("needs a 'train' fraction greater than 0")
        if sum(v.values()) > 1.0 + 1e-9:
            raise ValueError(f"fractions add up to {sum(v.values()):g}, more than 1")
        return v


DistributedStrategy = Literal["none", "ddp", "fsdp"]


class DistributedConfig(_Section):
    """(tuneforge) One job on several processes or devices, launched with torch.distributed (torchrun's launcher;
    train/distributed.py). `batch_size` stays per process: a step sees batch_size x processes x
    gradient_accumulation_steps examples, in the order a single process would see them."""

    strategy: DistributedStrategy = Field(
        "none",
        description="(tuneforge) none: one process. ddp: every process holds the whole model and the gradients of "
        "the LoRA weights are summed across processes (DistributedDataParallel). fsdp: the frozen base model is "
        "sharded across processes (FSDP2 fully_shard), for bases that do not fit one device, 4-bit (QLoRA) ones "
        "included; the small LoRA weights stay whole on each. `tuneforge train --nproc N` with N > 1 picks ddp when this is none.",
    )
    nproc_per_node: int | None = Field(
        None,
        gt=0,
        le=1024,
        description="(tuneforge) Processes per machine: at most one per GPU on CUDA, at most one per CPU core "
        "otherwise. Default: one per visible GPU on CUDA, else 1 (`tuneforge train --nproc N` overrides it).",
    )
    nnodes: int = Field(
        1,
        gt=0,
        le=1024,
        description="(tuneforge) Machines taking part; each runs `tuneforge train` with the same spec and output "
        "folder (on storage all of them share). More than 1 needs rdzv_endpoint.",
    )
    rdzv_endpoint: str | None = Field(
        None,
        max_length=300,
        description="(tuneforge) host:port where the machines of a multi-machine run meet (torchrun's "
        "--rdzv-endpoint, c10d rendezvous): the machine that owns this address hosts it. Only with nnodes > 1.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        if self.strategy == "none" and (self.nproc_per_node or 1) * self.nnodes > 1:
            raise ValueError(
                f"nproc_per_node={self.nproc_per_node} and nnodes={self.nnodes} need a strategy: set strategy to "
                "'ddp' (whole model on each process) or 'fsdp' (base sharded across processes)"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"nnodes={self.nnodes} needs rdzv_endpoint (host:port of one of the machines, reachable by all)"
            )
        if self.rdzv_endpoint is not None:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port (e.g. 10.0.0.1:29400)")
            if self.nnodes == 1:
                raise ValueError("rdzv_endpoint is for runs on several machines (nnodes > 1); remove it")
        return self


class TrainingConfig(_Section):
    early_stopping_patience: int = Field(
        5, gt=0, le=MAX_INT32, description="Stop when the validation loss has not improved for this many evaluations."
    )
    num_train_epochs: float = Field(1, gt=0, le=1e6, description="Passes over the training data (fractions allowed).")
    gradient_accumulation_steps: int = Field(
        1, gt=0, lt=1000, description="Micro-batches whose gradients add up to one optimizer step."
    )
    warmup_steps: int | None = Field(
        None,
        ge=0,
        le=MAX_INT32,
        description="Optimizer steps of linear learning-rate warm-up from 0. Default: 5% of the steps (at least 1).",
    )
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate of the LoRA weights.")
    lr_scheduler_type: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]
        "cosine",
        description="Learning-rate schedule after warm-up: linear, cosine, cosine_with_restarts, polynomial, "
        "constant, constant_with_warmup, inverse_sqrt, or reduce_lr_on_plateau (warm-up, then the rate is halved "
        "each time the validation loss fails to improve).",
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together so little compute is spent on padding; the batch "
        "order stays shuffled.",
    )
    preference_optimization: Literal["ORPO", "DONT"] = Field(
        "DONT",
        description="MonsterAPI's preference optimization switch: 'ORPO' trains on preference pairs with ORPO "
        "(same as preference_method 'orpo'); 'DONT' trains supervised (SFT) unless preference_method is set.",
    )
    # --- tuneforge extensions -------------------------------------------------------------------------------------
    batch_size: int = Field(8, gt=0, le=4096, description="(tuneforge) Examples per micro-batch.")
    max_steps: int | None = Field(
        None,
        gt=0,
        le=MAX_INT32,
        description="(tuneforge) Stop after this many optimizer steps (overrides num_train_epochs).",
    )
    eval_steps: int | None = Field(
        None,
        gt=0,
        le=MAX_INT32,
        description="(tuneforge) Evaluate every N optimizer steps. Default: about 10 times per run.",
    )
    save_steps: int | None = Field(
        None,
        gt=0,
        le=MAX_INT32,
        description="(tuneforge) Write a resumable checkpoint every N optimizer steps. Default: at each evaluation.",
    )
    save_total_limit: int = Field(
        2, gt=0, le=MAX_INT32, description="(tuneforge) Checkpoints kept on disk (oldest removed first)."
    )
    logging_steps: int = Field(
        1, gt=0, le=MAX_INT32, description="(tuneforge) Record the training loss every N optimizer steps."
    )
    seed: int = Field(
        42,
        ge=0,
        le=2**32 - 1,  # numpy's seeds are 32-bit
        description="(tuneforge) Seed for the data split, shuffling, dropout and LoRA init.",
    )
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="(tuneforge) AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="(tuneforge) Gradient clipping norm (0 disables).")
    optimizer: Literal["auto", "adamw", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit"] = Field(
        "auto",
        description="(tuneforge) auto: paged AdamW 8-bit for QLoRA on CUDA, else torch AdamW. The bitsandbytes "
        "optimizers need CUDA.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="(tuneforge) Compute precision. auto: bf16 when the device supports it (CUDA with bf16, CPUs "
        "with AVX-512 BF16/AMX), else fp32. Adapter weights and optimizer state stay fp32.",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0.0, description="(tuneforge) Minimum decrease in validation loss that counts as an improvement."
    )
    preference_method: PreferenceMethod | None = Field(
        None,
        description="(tuneforge) Preference tuning on prompt/chosen/rejected pairs instead of SFT: 'orpo' (odds-ratio "
        "preference optimization, no reference model; arXiv:2403.07691), 'dpo' (direct preference optimization "
        "against the base model with the adapter disabled; arXiv:2305.18290) or 'simpo' (length-normalised, "
        "reference-free; arXiv:2405.14734). Empty: 'orpo' when preference_optimization is 'ORPO', else SFT.",
    )
    preference_beta: float | None = Field(
        None,
        gt=0,
        description="(tuneforge) DPO and SimPO: beta, the scale of the implicit reward (DPO: how far the adapter may "
        "move from the reference; default 0.1 for dpo, 2.0 for simpo). ORPO uses orpo_lambda instead.",
    )
    orpo_lambda: float = Field(
        0.1,
        gt=0,
        description="(tuneforge) ORPO: weight of the odds-ratio term added to the chosen answer's NLL (the paper's "
        "lambda, TRL's beta; default 0.1).",
    )
    simpo_gamma: float = Field(
        0.5,
        ge=0,
        description="(tuneforge) SimPO: target reward margin gamma between chosen and rejected (default 0.5).",
    )

    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="(tuneforge) Train on several processes or devices (DDP or FSDP2 through torch.distributed); "
        "default: one process.",
    )

    @model_validator(mode="after")
    def _preference(self) -> TrainingConfig:
        method = self.preference_method
        if self.preference_optimization == "ORPO" and method not in (None, "orpo"):
            raise ValueError(
                f"preference_optimization 'ORPO' conflicts with preference_method {method!r}: leave "
                f"preference_optimization at 'DONT' to train with {method!r}, or set preference_method to 'orpo'"
            )
        if self.preference_beta is not None and self.preference in (None, "orpo"):
            what = "ORPO's weight is orpo_lambda" if self.preference == "orpo" else "this job trains SFT"
            raise ValueError(f"preference_beta applies to preference_method 'dpo' and 'simpo' only; {what}")
        return self

    @property
    def preference(self) -> str | None:
        """The preference method this job trains with ('orpo', 'dpo', 'simpo'), or None for SFT."""
        if self.preference_method is not None:
            return self.preference_method
        return "orpo" if self.preference_optimization == "ORPO" else None

    @property
    def beta(self) -> float:
        """The preference method's beta (DPO/SimPO), its default when not set; ORPO's reward scale is orpo_lambda."""
        if self.preference == "orpo":
            return self.orpo_lambda
        if self.preference_beta is not None:
            return self.preference_beta
        return DEFAULT_BETA.get(self.preference or "", 0.1)


class LoggingConfig(_Section):
    use_wandb: bool = Field(False, description="Log metrics to Weights & Biases (needs the `wandb` package).")
    wandb_username: str = Field("", description="W&B entity (user or team).")
    wandb_login_key: str = Field("", description="W&B API key; empty: use the login already on this machine.")
    wandb_project: str = Field("", description="W&B project (default: 'tuneforge').")
    wandb_run_name: str = Field("", description="W&B run name (default: the output folder's name).")


class HuggingfaceConfig(_Section):
    hf_token: str | None = Field(None, description="Hugging Face token for private models and datasets.")
    hf_model_path: str | None = Field(
        None, description="Push the adapter to this hub repository after training (not supported yet: must be empty)."
    )

    @field_validator("hf_model_path")
    @classmethod
    def _no_push(cls, v: str | None) -> str | None:
        if v:
            raise ValueError(
                "pushing the adapter to the hub is not supported yet; leave it empty and download the adapter instead"
            )
        return v


_SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a job name usable in deployment and file names


class JobSpec(_Section):
    """A fine-tuning job: MonsterAPI's `LLMServiceParams` payload plus tuneforge's optional extensions."""

    pretrainedmodel_config: PretrainedModelConfig = Field(default_factory=PretrainedModelConfig)
    data_config: DataConfig
    training_config: TrainingConfig = Field(default_factory=TrainingConfig)
    logging_config: LoggingConfig = Field(default_factory=LoggingConfig)
    hf_config: HuggingfaceConfig = Field(default_factory=HuggingfaceConfig)
    user_session_token: str | None = Field(None, description="MonsterAPI session token; accepted and not used.")
    suffix: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="(tuneforge) A name for the job, as OpenAI's fine-tuning `suffix`: up to 64 letters, digits, "
        "'.', '_' or '-'. Shown in job lists and used as the default name of the adapter's deployment.",
    )

    @field_validator("suffix")
    @classmethod
    def _suffix_chars(cls, v: str | None) -> str | None:
        if v is not None and not _SUFFIX.fullmatch(v):
            raise ValueError("use letters, digits, '.', '_' and '-' only, starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        t = self.training_config
        if (
            self.data_config.validation_data_path is None
            and self.data_config.data_split_config.get("validation", 0) == 0
            and t.lr_scheduler_type == "reduce_lr_on_plateau"
        ):
            raise ValueError(
                "lr_scheduler_type 'reduce_lr_on_plateau' needs a validation split: give data_split_config a "
                "'validation' fraction or set validation_data_path"
            )
        d = self.data_config
        if t.distributed.strategy == "fsdp" and (d.test_data_path or d.data_split_config.get("test", 0) > 0):
            raise ValueError(
                "training_config.distributed.strategy 'fsdp' with test rows: the evaluation after training "
                "generates answers in one process, which a base sharded across processes cannot do; use "
                "strategy 'ddp', or drop the test split and run `tuneforge eval` on the adapter afterwards"
            )
        if t.preference is not None and t.distributed.strategy != "none":
            raise ValueError(
                f"preference tuning ({t.preference}) runs in one process: set training_config.distributed.strategy "
                "to 'none' (and drop --nproc)"
            )
        if d.task != "causal_lm" and t.distributed.strategy != "none":
            raise ValueError(
                f"data_config.task {d.task!r} trains in one process: set training_config.distributed.strategy "
                "to 'none' (and drop --nproc)"
            )
        if t.preference is not None:
            if d.data_format not in ("auto", "preference"):
                raise ValueError(
                    f"data_config.data_format {d.data_format!r} cannot be used with preference tuning "
                    f"({t.preference}): it trains on chosen/rejected pairs; set data_format to 'preference' or 'auto'"
                )
            for name in ("completion_column", "train_on_inputs"):
                if getattr(d, name):
                    raise ValueError(
                        f"data_config.{name} is for SFT; preference tuning ({t.preference}) learns from the chosen "
                        "and rejected answers only: remove it"
                    )
        elif d.data_format == "preference":
            raise ValueError(
                "data_config.data_format 'preference' needs a preference method: set training_config."
                "preference_method to one of orpo, dpo, simpo (or preference_optimization to 'ORPO')"
            )
        if d.image_augmentation and d.task != "image_classification":
            raise ValueError(
                f"data_config.image_augmentation is for data_config.task 'image_classification', not {d.task!r}"
            )
        if d.task != "causal_lm":
            # These fields shape a causal LM's prompt; classifiers and seq2seq models read their input column and
            # label_column only.
            reads = "data_config.image_column" if d.task == "image_classification" else "data_config.text_column"
            causal_only = {
                "data_config.prompt_template": d.prompt_template,
                "data_config.completion_column": d.completion_column,
                "data_config.train_on_inputs": d.train_on_inputs,
                "data_config.data_format": d.data_format != "auto",
                "training_config.preference_method": t.preference,
                # Classifiers: QLoRA would quantize the new head too (bitsandbytes leaves only the LM head in full
                # precision). Seq2seq: QLoRA on T5/BART is not proven by the test suite, so it is not offered.
                "pretrainedmodel_config.use_quantization": self.pretrainedmodel_config.use_quantization,
            }
            given = [name for name, value in causal_only.items() if value]
            if given:
                raise ValueError(
                    f"{', '.join(given)} cannot be used with data_config.task {d.task!r} (it reads "
                    f"{reads} and data_config.label_column): remove it or set task to 'causal_lm'"
                )
            column = d.image_column if d.task == "image_classification" else d.text_column
            if column == d.label_column:
                raise ValueError(f"{reads} and label_column are both {column!r}: name two columns")
        return self

    # --- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if redact:
            for section, key in (("logging_config", "wandb_login_key"), ("hf_config", "hf_token")):
                if data[section].get(key):
                    data[section][key] = "***"
            if data.get("user_session_token"):
                data["user_session_token"] = "***"
        return data

    def to_json(self, *, redact: bool = True) -> str:
        return json.dumps(self.to_dict(redact=redact), indent=2)


# --- parsing -------------------------------------------------------------------------------------------------------


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "__root__") or "spec"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at `loc`'s parent, for 'did you mean' hints."""
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One readable line per problem: 'training_config.lora_r: 0 is not allowed: must be greater than 0'."""
    return describe_errors(exc.errors())


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """`describe_validation_error` for pydantic's error dicts (`loc`, `type`, `msg`, `input`), e.g. FastAPI's."""
    lines = []
    for err in errors:
        loc = tuple(err["loc"])
        where = _loc(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            name = str(loc[-1])
            lines.append(f"{where}: unknown field{did_you_mean(name, _fields_at(loc))}")
        elif kind == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if "input" in err and kind != "model_type" and not isinstance(err["input"], dict):
                lines.append(f"{where}: {err['input']!r} is not allowed: {msg}")
            else:
                lines.append(f"{where}: {msg}")
    return lines


class SpecError(TuneforgeError):
    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(problems))


def parse_spec(data: dict[str, Any], *, source: str | None = None) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([f"a job spec is a JSON/YAML object, got {type(data).__name__}"], source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc), source) from None


def _coerce_scalar(text: str) -> Any:
    """`--set` values: JSON when it parses (numbers, true/false, null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` overrides (the CLI's --set) to a raw spec dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TuneforgeError(
                f"--set {item!r}: expected section.field=value, e.g. training_config.learning_rate=1e-4"
            )
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TuneforgeError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = _coerce_scalar(value)
    return data


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TuneforgeError(f"spec file {str(path)!r} does not exist", field="spec", value=str(path))
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TuneforgeError(f"{path}: not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TuneforgeError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if data is None:
        raise TuneforgeError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise TuneforgeError(
            f"{path}: expected a mapping of sections (data_config, training_config, ...), not a {type(data).__name__}",
            field="spec",
            value=str(path),
        )
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    data = apply_overrides(read_spec_file(path), overrides or [])
    return parse_spec(data, source=str(path))
