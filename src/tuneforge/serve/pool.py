"""Adapters of one kind served by name, each loaded on first use: the classifiers of `POST /v1/classify`
(serve/classify.py) and the seq2seq models of `POST /v1/completions` (serve/seq2seq.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ..errors import TuneforgeError
from .engine import UnknownModelError

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


class Loader(Protocol[T_co]):
    """Loads one adapter over its base (LoadedClassifier, LoadedSeq2Seq)."""

    def __call__(self, adapter_dir: str, *, model_path: str | None = None, device: str | None = None) -> T_co: ...


class AdapterPool(Generic[T]):
    """Adapters of one kind by name, loaded on first use by `load`.

    Every folder must pass `check` (is_classifier, is_seq2seq) at construction, or a TuneforgeError names its
    `--adapter NAME=FOLDER` as "not a {adapter_kind} adapter". `get` of a name not served raises UnknownModelError:
    "model 'x' is not a {model_kind} served here; {model_kind}s: a, b".
    """

    def __init__(
        self,
        adapters: dict[str, str],
        *,
        check: Callable[[str | Path], bool],
        load: Loader[T],
        adapter_kind: str,
        model_kind: str,
        model_path: str | None = None,
        device: str | None = None,
    ):
        for name, folder in adapters.items():
            if not check(folder):
                raise TuneforgeError(
                    f"--adapter {name}={folder}: not a {adapter_kind} adapter", field="--adapter", value=folder
                )
        self.adapters = dict(adapters)
        self.load, self.model_kind = load, model_kind
        self.model_path, self.device = model_path, device
        self.loaded: dict[str, T] = {}
        self.lock = threading.Lock()
        self.created = int(time.time())

    def names(self) -> list[str]:
        return list(self.adapters)

    def has(self, name: str) -> bool:
        return name in self.adapters

    def get(self, name: str) -> T:
        if name not in self.adapters:
            raise UnknownModelError(
                f"model {name!r} is not a {self.model_kind} served here; {self.model_kind}s: "
                f"{', '.join(self.adapters) or 'none'}"
            )
        with self.lock:
            if name not in self.loaded:
                self.loaded[name] = self.load(self.adapters[name], model_path=self.model_path, device=self.device)
            return self.loaded[name]
