"""Generate the demo dataset: shop orders written as free text -> one-line JSON (a fixed output format).

A base model asked for "the order as JSON" answers with prose, markdown or other key names; after fine-tuning it
must emit exactly {"name": ..., "item": ..., "quantity": ..., "city": ...}, which an exact-match metric checks.
Deterministic: `python examples/demo/make_orders.py` rewrites orders.jsonl byte for byte.
"""

import json
import random
from pathlib import Path

NAMES = [
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Emeka",
    "Fatima",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Viktor",
    "Wen",
    "Yara",
    "Zoe",
]
ITEMS = [
    "apples",
    "notebooks",
    "coffee bags",
    "candles",
    "phone cases",
    "tea boxes",
    "socks",
    "bike lights",
    "flower pots",
    "batteries",
    "mugs",
    "pencils",
    "towels",
    "lamps",
    "scarves",
    "umbrellas",
]
CITIES = [
    "Paris",
    "Lagos",
    "Osaka",
    "Lima",
    "Berlin",
    "Toronto",
    "Nairobi",
    "Madrid",
    "Hanoi",
    "Oslo",
    "Quito",
    "Dublin",
    "Cairo",
    "Perth",
    "Seoul",
    "Austin",
]
TEMPLATES = [
    "{name} ordered {qty} {item} to be delivered in {city}.",
    "Please send {qty} {item} to {name} in {city}.",
    "{name} from {city} wants {qty} {item}.",
    "New order: {qty} {item} for {name}, shipping to {city}.",
    "Hi, this is {name}. Could you ship {qty} {item} to my place in {city}?",
    "Deliver {qty} {item} to {city} for {name}, thanks!",
    "{city} customer {name} needs {qty} {item} by Friday.",
    "Order from {name}: {item} x{qty}, destination {city}.",
]


def make(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, item, city = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CITIES)
        qty = rng.randint(1, 48)
        text = rng.choice(TEMPLATES).format(name=name, item=item, qty=qty, city=city)
        answer = json.dumps({"name": name, "item": item, "quantity": qty, "city": city})
        rows.append({"text": text, "json": answer})
    return rows


if __name__ == "__main__":
    here = Path(__file__).parent
    with open(here / "orders.jsonl", "w") as fh:
        for row in make(560, seed=7):
            fh.write(json.dumps(row) + "\n")
