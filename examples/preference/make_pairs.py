"""Generate the preference example: shop orders with a correct one-line JSON (chosen) and a worse answer (rejected).

Built from the SFT demo's orders (examples/demo/orders.jsonl). The rejected answers are the mistakes a small model
makes on this task, in turn: a wrong quantity, a wrong city, the name nested where the item belongs, and a
correct JSON wrapped in chatty prose (concise vs rambling). Deterministic: `python examples/preference/make_pairs.py`
rewrites pairs.jsonl byte for byte.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
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


def rejected_for(order: dict, kind: int, rng: random.Random) -> str:
    wrong = dict(order)
    if kind == 0:
        wrong["quantity"] = order["quantity"] + rng.choice([-3, -2, -1, 1, 2, 5, 10])
        if wrong["quantity"] <= 0:
            wrong["quantity"] = order["quantity"] + 7
    elif kind == 1:
        wrong["city"] = rng.choice([c for c in CITIES if c != order["city"]])
    elif kind == 2:
        wrong["item"] = {"name": order["name"], "quantity": order["quantity"]}
    else:
        return (
            f"Sure! Here is the order you asked for, written as JSON: {json.dumps(order)}. Let me know if you "
            "need anything else!"
        )
    return json.dumps(wrong)


def main() -> None:
    rng = random.Random(16)
    rows = [json.loads(line) for line in (HERE.parent / "demo" / "orders.jsonl").read_text().splitlines()]
    with open(HERE / "pairs.jsonl", "w") as fh:
        for i, row in enumerate(rows):
            order = json.loads(row["json"])
            pair = {"text": row["text"], "chosen": row["json"], "rejected": rejected_for(order, i % 4, rng)}
            fh.write(json.dumps(pair) + "\n")
    print(f"wrote {len(rows)} pairs to {HERE / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()
