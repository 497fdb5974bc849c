"""An adapter trained on a prompt template is prompted the same way at inference: /v1/chat/completions (official
openai client over HTTP), `tuneforge generate`, merge/export; `--chat-template model` overrides. The card's Jinja
templates reproduce the training prompts exactly (template, Alpaca, prompt/completion)."""

from __future__ import annotations

import json

import openai
import pytest
from serve_helpers import LiveServer

from tiny import make_tiny_spec, write_qa_data

QUESTION = "what is 1 plus 2?"
TRAINING_PROMPT = f"Question: {QUESTION}\nAnswer: "


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from tuneforge.train.recipe import train

    root = tmp_path_factory.mktemp("template-run")
    data = write_qa_data(root / "qa.jsonl")
    train(make_tiny_spec(tiny_model_dir, data, max_steps=6), root / "run", quiet=True)
    return root / "run" / "adapter"


@pytest.fixture(scope="module")
def engine(tiny_model_dir, trained):
    from tuneforge.serve.engine import InferenceEngine

    eng = InferenceEngine(str(tiny_model_dir), adapters={"qa": str(trained)}, model_name="tiny")
    yield eng
    eng.close()


def test_chat_completions_use_the_training_prompt(engine):
    from tuneforge.serve.app import create_app

    messages = [{"role": "user", "content": QUESTION}]
    assert engine.chat_prompt(messages, "qa") == TRAINING_PROMPT
    assert engine.chat_prompt(messages, None).startswith("<|im_start|>user\n")  # the base keeps its chat template
    with LiveServer(create_app(engine)) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        chat = client.chat.completions.create(model="qa", messages=messages, temperature=0, max_tokens=6)
        plain = client.completions.create(model="qa", prompt=TRAINING_PROMPT, temperature=0, max_tokens=6)
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens == len(engine.encode(TRAINING_PROMPT))


def test_model_template_override(tiny_model_dir, trained):
    from tuneforge.serve.engine import InferenceEngine

    eng = InferenceEngine(str(tiny_model_dir), adapters={"qa": str(trained)}, chat_template="model")
    try:
        assert eng.chat_prompt([{"role": "user", "content": QUESTION}], "qa") == (
            f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
        )
    finally:
        eng.close()


def test_generate_uses_the_training_prompt(trained, capsys):
    from tuneforge.cli import main

    def run(*args):
        assert main(["generate", "--adapter", str(trained), "--max-new-tokens", "4", *args]) == 0
        return capsys.readouterr().out

    assert run(QUESTION) == run(TRAINING_PROMPT, "--raw")
    assert run(QUESTION, "--chat-template", "model") == run(
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n", "--raw"
    )


def test_merged_model_carries_the_training_prompt_as_its_chat_template(trained, tmp_path):
    from transformers import AutoTokenizer

    from tuneforge.inference import merge_adapter

    merge_adapter(trained, tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert (
        tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
        == TRAINING_PROMPT
    )
    merge_adapter(trained, tmp_path / "m2", chat_template="model")
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(tmp_path / "m2").chat_template


def test_card_templates_reproduce_the_training_prompts(tiny_tokenizer):
    from tuneforge.adapter_card import build_card
    from tuneforge.data.formats import AlpacaFormat, PromptCompletionFormat, Template, TemplateFormat, alpaca_prompt

    def render(card, messages, generation=True):
        return tiny_tokenizer.apply_chat_template(
            messages, chat_template=card.chat_template, tokenize=False, add_generation_prompt=generation
        )

    alpaca = build_card(AlpacaFormat(), adds_bos=False, rows=[{"instruction": "a", "output": "b"}])
    assert alpaca.system_prompt is None and alpaca.prompt_template is None
    u = [{"role": "user", "content": "Name a color."}]
    assert render(alpaca, u) == alpaca_prompt("Name a color.")
    multi = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 4 and 4?"},
    ]
    assert render(alpaca, multi) == alpaca_prompt("And 4 and 4?", system="Be exact.", history=[("Add 2 and 3.", "5")])
    # llama.cpp renders a finished conversation to probe a template: the answer and EOS follow the prompt.
    assert render(alpaca, u + [{"role": "assistant", "content": "Red."}], False) == (
        alpaca_prompt("Name a color.") + "Red.<|im_end|>"
    )

    # Several prompt placeholders: the user message fills the first, the others stay empty.
    two = build_card(
        TemplateFormat(Template.parse("<s>[{topic}] {question} {{x}}\n=> {answer}!")), adds_bos=False, rows=[]
    )
    assert two.deploy_template == "<s>[{topic}] {question} {{x}}\n=> {completion}"
    assert render(two, u) == "<s>[Name a color.]  {x}\n=> "
    pc = build_card(PromptCompletionFormat(), adds_bos=False, rows=[])
    assert render(pc, u) == "Name a color."


def test_card_records_a_shared_system_prompt():
    from tuneforge.adapter_card import build_card
    from tuneforge.data.formats import ChatFormat

    def rows(*systems):
        return [
            {
                "messages": ([{"role": "system", "content": s}] if s else [])
                + [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
            }
            for s in systems
        ]

    assert build_card(ChatFormat(), adds_bos=False, rows=rows("Be brief.", "Be brief.")).system_prompt == "Be brief."
    assert build_card(ChatFormat(), adds_bos=False, rows=rows("Be brief.", None)).system_prompt is None
    card = build_card(ChatFormat(), adds_bos=False, rows=rows("Be brief."))
    assert card.chat_template is None  # chat data: the model's own template is the training template
    assert card.messages_for([{"role": "user", "content": "q"}])[0] == {"role": "system", "content": "Be brief."}
    assert card.messages_for([{"role": "user", "content": "q"}], "model") == [{"role": "user", "content": "q"}]
    assert json.loads(card.to_json())["data_format"] == "chat"
