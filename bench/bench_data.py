"""The training benchmark's data set, generated here: instruction-following rows with realistic lengths.

    python bench/bench_data.py [--rows 100] [--out bench/out/bench_data.jsonl]

Deterministic (Python's `random.Random`, whose streams are stable across versions) and self-contained, so
`make bench` runs on a plain clone. What matters to a throughput benchmark is the token-length distribution, and
this one follows what Alpaca-style sets show (and what the benchmark used before, rendered from the Self-Instruct
seed tasks, which are CC BY-NC and so cannot ship here): whole examples log-normal, median ~150 tokens, p95 ~370,
a long tail that cutoff_len 512 clips for ~1.5% of rows; prompts are ~25% of the tokens, the rest is the
completion the loss is computed on. The text is written from templates (task families with their own phrasing,
numbered steps, lists, explanations), so the fine-tune has structure to learn, as a real instruction set has.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

# Whole-example length in words (SmolLM2's tokenizer gives ~1.3 tokens per word on this text): median 112 words
# ~ 150 tokens, sigma 0.57 puts p95 near 380 tokens, as measured on the seed-task set the benchmark used to build.
MEDIAN_WORDS = 112
SIGMA = 0.57
MAX_WORDS = 600  # beyond cutoff_len 512 anyway: a longer draw would only cost generation time

TOOLS = [
    "a kettle",
    "a bicycle pump",
    "a sewing machine",
    "a garden hose",
    "a laptop",
    "a drill",
    "a rice cooker",
    "a spreadsheet",
    "a camera",
    "a compost bin",
    "a bread oven",
    "a paint roller",
    "a soldering iron",
]
ACTIVITIES = [
    "learning a new language",
    "training for a 10 km run",
    "saving money each month",
    "keeping houseplants alive",
    "writing a cover letter",
    "planning a weekend trip",
    "cooking for a large group",
    "studying for an exam",
    "starting a vegetable garden",
    "running a team meeting",
    "moving to a new city",
    "learning to play the guitar",
    "reducing screen time",
    "preparing for a job interview",
]
TOPICS = [
    "the water cycle",
    "how vaccines work",
    "why the sky is blue",
    "how bread rises",
    "what inflation is",
    "how a bill becomes law",
    "why leaves change colour",
    "how batteries store energy",
    "what a compiler does",
    "how bees make honey",
    "why tides happen",
    "how credit scores work",
    "what photosynthesis is",
    "how a search engine ranks pages",
    "why bridges expand in summer",
]
THINGS = [
    "a lighthouse",
    "an old library",
    "a mountain village",
    "a night market",
    "a rainforest",
    "a train station",
    "a small bakery",
    "a desert at dawn",
    "a harbour in winter",
    "a rooftop garden",
    "a science museum",
]
PEOPLE = ["a new employee", "a customer", "a neighbour", "a teacher", "a landlord", "a colleague", "an old friend"]
REASONS = [
    "a delayed delivery",
    "a cancelled meeting",
    "a late payment",
    "a broken appliance",
    "a schedule change",
    "a missing invoice",
    "a noisy renovation",
    "a lost parcel",
]

ADJ = [
    "careful",
    "simple",
    "steady",
    "clear",
    "gentle",
    "practical",
    "quick",
    "thorough",
    "patient",
    "regular",
    "small",
    "useful",
    "reliable",
    "honest",
    "calm",
    "consistent",
]
NOUN = [
    "step",
    "habit",
    "plan",
    "routine",
    "check",
    "note",
    "list",
    "goal",
    "method",
    "detail",
    "schedule",
    "record",
    "rule",
    "idea",
    "tool",
    "reminder",
]
VERB = [
    "prepare",
    "check",
    "write down",
    "review",
    "measure",
    "clean",
    "compare",
    "repeat",
    "plan",
    "adjust",
    "test",
    "organise",
    "track",
    "share",
    "limit",
    "finish",
]
OBJ = [
    "the materials",
    "your notes",
    "the settings",
    "each part",
    "the results",
    "a short list",
    "the first draft",
    "the timing",
    "your progress",
    "the budget",
    "the main points",
    "every mistake",
    "the next task",
]
WHEN = [
    "before you start",
    "at the end of each day",
    "once a week",
    "after every attempt",
    "when something changes",
    "as early as possible",
    "while it is still fresh",
    "before moving on",
    "every morning",
]
WHY = [
    "it saves time later",
    "small errors add up quickly",
    "it keeps you motivated",
    "you can see what works",
    "it avoids surprises",
    "others can follow along",
    "it makes the result more reliable",
    "mistakes are cheaper to fix early",
    "it builds confidence",
    "the details are easy to forget",
]
CONNECT = [
    "In practice,",
    "For example,",
    "As a rule,",
    "Most of the time,",
    "In addition,",
    "Above all,",
    "At first,",
    "Over time,",
    "In short,",
    "Because of this,",
]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _sentence(rng: random.Random) -> str:
    shape = rng.randrange(5)
    adj, noun, verb, obj = rng.choice(ADJ), rng.choice(NOUN), rng.choice(VERB), rng.choice(OBJ)
    if shape == 0:
        return f"{verb.capitalize()} {obj} {rng.choice(WHEN)}, because {rng.choice(WHY)}."
    if shape == 1:
        return f"{rng.choice(CONNECT)} {_a(adj)} {noun} helps you {verb} {obj}."
    if shape == 2:
        return f"It is worth taking a moment to {verb} {obj} {rng.choice(WHEN)}."
    if shape == 3:
        return f"{_a(adj).capitalize()} {noun} matters here: {rng.choice(WHY)}."
    return f"{rng.choice(CONNECT)} people who {verb} {obj} {rng.choice(WHEN)} find that {rng.choice(WHY)}."


def _fill(rng: random.Random, words: int, style: str) -> str:
    """Text of about `words` words in the family's style: numbered steps, a bullet list or paragraphs."""
    parts: list[str] = []
    count = 0
    while count < words:
        s = _sentence(rng)
        if style == "steps":
            s = f"{len(parts) + 1}. {s}"
        elif style == "list":
            s = f"- {s}"
        parts.append(s)
        count += len(s.split())
    if style in ("steps", "list"):
        return "\n".join(parts)
    # Paragraphs of 3-5 sentences, as prose answers have.
    out, i = [], 0
    while i < len(parts):
        n = rng.randint(3, 5)
        out.append(" ".join(parts[i : i + n]))
        i += n
    return "\n\n".join(out)


def _prompt(rng: random.Random) -> tuple[str, str, str]:
    """An instruction (sometimes with an input passage), the response's opening line and the style it goes on in."""
    family = rng.randrange(7)
    if family == 0:
        tool = rng.choice(TOOLS)
        return f"Explain step by step how to use {tool} safely.", f"Here is how to use {tool} safely:", "steps"
    if family == 1:
        act = rng.choice(ACTIVITIES)
        return f"Give me some practical tips for {act}.", f"Some practical tips for {act}:", "list"
    if family == 2:
        topic = rng.choice(TOPICS)
        return f"Explain {topic} to a curious twelve-year-old.", f"Good question! Let's look at {topic}.", "prose"
    if family == 3:
        thing = rng.choice(THINGS)
        return f"Write a short, vivid description of {thing}.", f"Picture {thing}.", "prose"
    if family == 4:
        person, reason = rng.choice(PEOPLE), rng.choice(REASONS)
        return (
            f"Write a polite email to {person} about {reason}. Keep it friendly and propose a next step.",
            f"Subject: {reason.capitalize()[2:] if reason.startswith('a ') else reason}\n\nHello,",
            "prose",
        )
    # Instructions with an input passage (2 families in 7): the prompt carries real length, as in summarisation
    # and rewriting tasks, so prompts are ~25% of the tokens, as in the seed-task set.
    passage = _fill(rng, rng.randint(30, 90), "prose").replace("\n\n", " ")
    if family == 5:
        return (f"Summarise the following notes as a list of the key points.\n\n{passage}", "Key points:", "list")
    return (
        f"Rewrite the following text so that it is easier to read.\n\n{passage}",
        "Here is a clearer version.",
        "prose",
    )


def make_rows(n_rows: int, seed: int = 0) -> list[dict]:
    """`n_rows` rows {"prompt", "output"}; the same arguments always give the same rows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        total = min(MAX_WORDS, int(rng.lognormvariate(math.log(MEDIAN_WORDS), SIGMA)))
        prompt, opener, style = _prompt(rng)
        body = _fill(rng, max(total - len(prompt.split()) - len(opener.split()), 8), style)
        rows.append({"prompt": prompt, "output": opener + "\n" + body})
    return rows


def write_rows(path: Path, n_rows: int, seed: int = 0) -> None:
    with open(path, "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in make_rows(n_rows, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "bench_data.jsonl")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(args.out, args.rows, args.seed)
    print(f"{args.rows} rows -> {args.out}")


if __name__ == "__main__":
    main()
