"""`tuneforge_adapter.json`: how an adapter was trained, kept beside PEFT's adapter_config.json.

An adapter answers well only when it sees prompts shaped like its training prompts. An adapter trained with a
`prompt_template` (MonsterAPI's default path) learned "Order: ...\\nJSON: " and nothing else, so chat requests
rendered with the model's ChatML template miss entirely. The card records the training shape, and inference
(serve, deployments, `tuneforge generate`, the UI playground, the GGUF's chat template) renders chat messages
the way training did, unless told to use the model's own template (`--chat-template model`).

The training prompt is expressed as a Jinja chat template (`chat_template`), the same form a model's own chat
template takes, so every consumer renders it with `apply_chat_template` and the GGUF export can store it as
`tokenizer.chat_template` for llama.cpp, Ollama and LM Studio. For chat-shaped training data the field is null:
the model's own template is the training template.

How a chat request maps onto a text-trained prompt:

- template: the last user message fills the template's first prompt placeholder; other prompt placeholders are
  left empty (use MonsterAPI's `POST /generate` with `input_variables`, or /v1/completions, to fill several).
- alpaca: system messages replace Alpaca's preamble; earlier user/assistant turns become Alpaca history, as in
  training (`data.formats.alpaca_prompt`); the last user message is the instruction (no-input prompt).
- prompt_completion / text: the last user message is the prompt as is.

`base_model` records the exact base the adapter was trained on (what `model_path` resolved to, and a content hash
of its weights), so the adapter can be matched with its base on another machine.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data.formats import ALPACA_PREAMBLE, AlpacaFormat, MessagesFormat, RowFormat, Template, TemplateFormat
from .errors import TuneforgeError

CARD_NAME = "tuneforge_adapter.json"
CHAT_TEMPLATE_CHOICES = ("training", "model")


@dataclass
class AdapterCard:
    data_format: str  # a data_format value (data.formats.FORMATS)
    chat_template: str | None = None  # Jinja rendering chat messages as the training prompt; None: the model's own
    prompt_template: str | None = None  # the training prompt_template (completion placeholder included)
    completion_column: str | None = None
    system_prompt: str | None = None  # the system prompt every training row had, added when a request has none
    base_model: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    # data_config.task; "classification": a sequence classifier over id2label; "image_classification": an image
    # classifier over id2label (AutoModelForImageClassification; its image processor is saved with the adapter);
    # "seq2seq": an encoder-decoder whose source is text_column and target completion_column
    task: str = "causal_lm"
    # Classifiers: the label names by id (JSON object keys are strings: "0", "1", ...) and back, as transformers'
    # configs hold them; the base is loaded with AutoModelForSequenceClassification(num_labels=len(id2label)).
    id2label: dict[str, str] | None = None
    label2id: dict[str, int] | None = None
    max_length: int | None = (
        None  # classifiers, seq2seq: texts are cut to this many tokens, as in training (cutoff_len)
    )
    text_column: str | None = None  # classifiers, seq2seq: the column `tuneforge predict` reads by default
    image_column: str | None = None  # image classifiers: the image column `tuneforge predict` reads by default

    @property
    def labels(self) -> list[str]:
        """A classifier's label names in id order ([] for causal LMs)."""
        return [self.id2label[str(i)] for i in range(len(self.id2label))] if self.id2label else []

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def write(self, adapter_dir: str | Path) -> Path:
        path = Path(adapter_dir) / CARD_NAME
        path.write_text(self.to_json() + "\n")
        return path

    @property
    def deploy_template(self) -> str | None:
        """The training template in the form of MonsterAPI's deploy `prompt_template`: the completion placeholder
        renamed `{completion}`, the prompt placeholders kept (they are `/generate`'s input_variables)."""
        if self.prompt_template is None or self.completion_column is None:
            return None
        t = Template.parse(self.prompt_template, self.completion_column)
        escape = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
        head = "".join(escape(lit) + ("" if name is None else "{" + name + "}") for lit, name in t.prompt_pieces)
        return head + "{completion}"

    def messages_for(self, messages: list[dict[str, Any]], mode: str = "training") -> list[dict[str, Any]]:
        """`messages` with the training system prompt first when they have none (training mode only)."""
        if mode != "training" or not self.system_prompt or any(m.get("role") == "system" for m in messages):
            return messages
        return [{"role": "system", "content": self.system_prompt}, *messages]

    def template_for(self, mode: str = "training") -> str | None:
        """The chat template to render with: the training one, or None for the model's own."""
        check_mode(mode)
        return self.chat_template if mode == "training" else None


def check_mode(mode: str, field_name: str = "chat_template") -> str:
    if mode not in CHAT_TEMPLATE_CHOICES:
        raise TuneforgeError(
            f"{field_name}: {mode!r} is not allowed; allowed: training (the adapter's training "
            "prompt), model (the base model's chat template)",
            field=field_name,
            value=mode,
        )
    return mode


def read_card(adapter_dir: str | Path) -> AdapterCard | None:
    """The card of an adapter folder; None for adapters trained elsewhere (they get the model's template)."""
    path = Path(adapter_dir).expanduser() / CARD_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in AdapterCard.__dataclass_fields__}
        return AdapterCard(**known)
    except (json.JSONDecodeError, TypeError) as err:
        raise TuneforgeError(
            f"{path}: not a valid {CARD_NAME} ({err}); delete it to serve the adapter with the model's chat template",
            field="adapter",
            value=str(path),
        ) from None


# --- the training prompt as a chat template ---------------------------------------------------------------------


def gguf_refusal(adapter_dir: str | Path) -> str | None:
    """Why the adapter cannot be exported to GGUF, or None. llama.cpp's converter is used here for decoder-only
    language models: not for a classification head (text or image) nor for an encoder-decoder."""
    card = read_card(adapter_dir)
    if card is None or card.task == "causal_lm":
        return None
    return (
        "GGUF is for decoder-only text-generation models, and this adapter was trained with data_config.task "
        f"{card.task!r}"
    )


def _lit(text: str) -> str:
    """A Jinja expression printing `text` exactly (a JSON string is a valid Jinja string literal)."""
    return "{{ " + json.dumps(text) + " }}" if text else ""


_LAST_USER = (
    "{%- set ns = namespace(user='') -%}{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
    "{%- set ns.user = m['content'] -%}{%- endif -%}{%- endfor -%}"
)
# When the conversation ends with an assistant turn and no generation prompt is asked for (llama.cpp renders such
# conversations to probe a template), the answer follows the prompt, then EOS, as in training.
_ANSWER = (
    "{%- if not add_generation_prompt and messages and messages[-1]['role'] == 'assistant' -%}"
    "{{ messages[-1]['content'] }}{%- if eos_token -%}{{ eos_token }}{%- endif -%}{%- endif -%}"
)


def training_chat_template(fmt: RowFormat, *, adds_bos: bool) -> str | None:
    """Jinja rendering chat messages as `fmt`'s training prompt; None for chat-shaped formats. `adds_bos`: the
    training prompts started with the tokenizer's BOS (the template writes it, since chat prompts are tokenized
    without special tokens)."""
    if isinstance(fmt, MessagesFormat):
        return None
    bos = "{{ bos_token }}" if adds_bos else ""
    if isinstance(fmt, TemplateFormat):
        t = fmt.template
        body, first = [], True
        for literal, name in t.prompt_pieces:
            body.append(_lit(literal))
            if name is not None:
                body.append("{{ ns.user }}" if first else "")
                first = False
        return _LAST_USER + bos + "".join(body) + _ANSWER
    if isinstance(fmt, AlpacaFormat):
        # Mirrors data.formats.alpaca_prompt with history = the earlier turns and no input.
        return (
            "{%- set ns = namespace(system='') -%}{%- for m in messages -%}{%- if m['role'] == 'system' -%}"
            "{%- set ns.system = m['content'] -%}{%- endif -%}{%- endfor -%}"
            + bos
            + "{%- if ns.system | trim -%}{{ ns.system }}{%- else -%}"
            + _lit(ALPACA_PREAMBLE)
            + "{%- endif -%}"
            + _lit("\n\n")
            + "{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
            + "{{ "
            + json.dumps("### Instruction:\n")
            + " + m['content'] + "
            + json.dumps("\n\n### Response:\n")
            + " }}"
            + "{%- elif m['role'] == 'assistant' -%}{{ m['content'] }}{%- if not loop.last -%}"
            + _lit("\n\n")
            + "{%- elif eos_token -%}{{ eos_token }}{%- endif -%}{%- endif -%}{%- endfor -%}"
        )
    # prompt_completion and text: the prompt is the text itself.
    return _LAST_USER + bos + "{{ ns.user }}" + _ANSWER


def common_system_prompt(fmt: RowFormat, rows: list[dict[str, Any]]) -> str | None:
    """The system prompt every training row starts with, if they all share one."""
    seen: Counter[str | None] = Counter()
    for row in rows:
        if isinstance(fmt, MessagesFormat):
            messages = fmt.conversation(row).messages
            seen[messages[0]["content"] if messages and messages[0]["role"] == "system" else None] += 1
        elif isinstance(fmt, AlpacaFormat):
            value = row.get("system")
            seen[value if isinstance(value, str) and value.strip() else None] += 1
        else:
            return None
        if len(seen) > 1:
            return None
    (only,) = seen or [None]
    return only


def build_card(
    fmt: RowFormat, *, adds_bos: bool, rows: list[dict[str, Any]], base_model: dict[str, Any] | None = None
) -> AdapterCard:
    template = fmt.template if isinstance(fmt, TemplateFormat) else None
    return AdapterCard(
        data_format=fmt.name,
        chat_template=training_chat_template(fmt, adds_bos=adds_bos),
        prompt_template=template.text if template else None,
        completion_column=template.completion if template else None,
        system_prompt=common_system_prompt(fmt, rows),
        base_model=dict(base_model or {}),
    )


def classification_card(
    labels: list[str],
    *,
    text_column: str | None = None,
    max_length: int | None = None,
    base_model: dict[str, Any] | None = None,
    task: str = "classification",
    image_column: str | None = None,
) -> AdapterCard:
    """The card of a sequence classifier (no prompt: the text goes in as it is) or, with task
    "image_classification", of an image classifier: the label set and the column `tuneforge predict` reads."""
    return AdapterCard(
        data_format=task,
        base_model=dict(base_model or {}),
        task=task,
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)},
        max_length=max_length,
        text_column=text_column,
        image_column=image_column,
    )


def seq2seq_card(
    *, text_column: str, target_column: str, max_length: int, base_model: dict[str, Any] | None = None
) -> AdapterCard:
    """The card of an encoder-decoder adapter: no prompt (the source goes to the encoder as it is)."""
    return AdapterCard(
        data_format="seq2seq",
        base_model=dict(base_model or {}),
        task="seq2seq",
        max_length=max_length,
        text_column=text_column,
        completion_column=target_column,
    )


def render_chat(
    tokenizer,
    messages: list[dict[str, Any]],
    card: AdapterCard | None,
    mode: str = "training",
    *,
    model_name: str = "the model",
    tools: list[dict[str, Any]] | None = None,
    require_tools: bool = True,
) -> str:
    """`messages` as the prompt text to continue: with the adapter's training prompt (mode "training", an adapter
    trained on a prompt template), else with the tokenizer's chat template. The text carries its own special
    tokens: tokenize it without adding any. `tools` (OpenAI's function definitions) are rendered by templates that
    support them; with `require_tools`, a template that would silently drop them is refused."""
    if not messages:
        raise TuneforgeError("messages must not be empty", field="messages")
    check_mode(mode)
    template = card.template_for(mode) if card is not None else None
    if card is not None:
        messages = card.messages_for(messages, mode)
    if template is None and not tokenizer.chat_template:
        raise TuneforgeError(
            f"{model_name} has no chat template: give a formatted prompt instead (/v1/completions, "
            "`tuneforge generate --raw`)",
            field="messages",
        )
    if tools and not template_supports_tools(tokenizer, template):
        if require_tools:
            raise TuneforgeError(
                f"tools: the chat template of {model_name} does not render tools, so the model would never see "
                "them; use a model whose template supports tool calling, or force a call with tool_choice "
                '"required" or {"type": "function", "function": {"name": ...}} (the output is then constrained to '
                "the tool's parameters)",
                field="tools",
            )
        tools = None
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tools=tools or None, tokenize=False, add_generation_prompt=True
    )


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "tuneforge_probe_tool",
        "description": "probe",
        "parameters": {"type": "object", "properties": {}},
    },
}


def template_supports_tools(tokenizer: Any, template: str | None = None) -> bool:
    """Whether the chat template renders the tools it is given (many templates ignore the argument): a
    conversation rendered with a probe tool and without one must differ."""
    probe = [{"role": "user", "content": "hi"}]
    try:
        with_tool = tokenizer.apply_chat_template(probe, chat_template=template, tools=[_PROBE_TOOL], tokenize=False)
    except Exception:  # a template that raises on tools does not support them either
        return False
    return bool(with_tool != tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False))
