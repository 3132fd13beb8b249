"""A feature cache per split list: every frame in one memory-mapped file, plus an offsets index.

Reading one ``.npy`` per clip costs a file open, a header parse and a small read per item, in
Python, per clip; at GPU speeds that is what limits training (issue 14: resnet18 on an H100 ran
at 0.66 of its in-memory speed). The cache holds the same numbers in one flat array, so a
shuffled batch is one copy per clip from memory (``gather``), and a clip of any length is a
view (``clip``). Files, beside the list::

    <list folder>/cache/<name>.<dtype>.<key>.frames.npy   (sum of n_mels x T_i,) float32 or float16;
                                                          clip i is frames[offsets[i]:offsets[i + 1]]
                                                          viewed as (n_mels, T_i)
    <list folder>/cache/<name>.<dtype>.<key>.index.json   n_mels, T_i per clip, the list it was built from
    <list folder>/cache/<name>.<dtype>.<key>.lock         held while one process builds

``<name>`` is the list's stem and a short hash of its resolved path and of the resolved feature
folder (``datapath``) it is read from (``train-1a2b3c4d``), so lists that share a stem
(``train.txt`` and ``train.lst`` in one folder, or a folder reached through another path), and one
list read from two feature folders, have caches of their own and never remove each other's.
``<key>`` is a hash of the list's bytes and every feature file's path, size and modification
time (and the dtype and format version), so an edited list or a recomputed feature gives a new
key and the cache is rebuilt; caches of older keys for the same list, folder and dtype are removed.
Both files are written under temporary names and renamed, the index last: a reader sees a whole
cache or none. Builders take an exclusive ``flock`` on the lock file first, so concurrent
processes build once and the others wait and then open the result.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from audioclf.distributed import barrier
from audioclf.files import atomic_write_json
from audioclf.runtime import DistInfo
from dataloaders.dataloader import FeatureDataError, SpectrogramDataset, read_npy_shape

log = logging.getLogger(__name__)

CACHE_DIRNAME = "cache"
CACHE_FORMAT_VERSION = 1
CACHE_DTYPES = ("float32", "float16")
LIST_HASH_LENGTH = 8  # hex digits of the hash of the resolved list path and datapath in a cache's name


@dataclass(frozen=True)
class CacheFiles:
    """Where one list's cache for one dtype and fingerprint lives."""

    frames: Path
    index: Path
    lock: Path
    stale_glob: str  # matches this list's caches of every key (same datapath and dtype), for clean-up
    # caches of this list under the names of earlier versions, removed at build: by the stem alone,
    # then by the stem and the list's path (before the datapath was part of the name)
    legacy_globs: tuple[str, ...] = ()


def fingerprint(list_file: Path, paths: Sequence[Path], dtype: str) -> str:
    """Hash of the list's bytes and each feature file's resolved path, size and mtime (ns)."""
    digest = hashlib.sha256(f"feature-cache v{CACHE_FORMAT_VERSION} {dtype}\n".encode())
    digest.update(Path(list_file).read_bytes())
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise FeatureDataError(f"{path}: feature file listed in {list_file} is missing") from None
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:LIST_HASH_LENGTH]


def cache_name(list_file: str | Path, datapath: str | Path) -> str:
    """``<list stem>-<hash of its resolved path and of the resolved datapath>``: one name per list
    file and feature folder, whatever the list's stem."""
    list_file = Path(list_file)
    location = str(list_file.resolve()) + "\0" + str(Path(datapath).resolve())  # NUL: in no path
    return f"{list_file.stem}-{_short_hash(location)}"


def cache_files(list_file: str | Path, datapath: str | Path, paths: Sequence[Path],
                dtype: str = "float32") -> CacheFiles:
    """The cache file names for ``list_file`` read from ``datapath`` as ``paths`` (fingerprinted now)."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"feature cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
    list_file = Path(list_file)
    key = fingerprint(list_file, paths, dtype)[:20]
    stem = f"{cache_name(list_file, datapath)}.{dtype}"
    folder = list_file.parent / CACHE_DIRNAME
    legacy = (f"{list_file.stem}.{dtype}.*", f"{list_file.stem}-{_short_hash(str(list_file.resolve()))}.{dtype}.*")
    return CacheFiles(folder / f"{stem}.{key}.frames.npy", folder / f"{stem}.{key}.index.json",
                      folder / f"{stem}.{key}.lock", f"{stem}.*", legacy)


class FeatureCache:
    """Read-only view of a built cache: ``clip(i)`` for any lengths, ``gather`` for equal lengths."""

    def __init__(self, files: CacheFiles, built: bool = False):
        index = json.loads(files.index.read_text())
        self.files = files
        self.built = built  # True when this process built it (rather than found it)
        self.n_mels = int(index["n_mels"])
        self.n_frames = np.asarray(index["n_frames"], dtype=np.int64)  # (N,) frames of each clip
        self.offsets = np.zeros(len(self.n_frames) + 1, dtype=np.int64)  # (N + 1,) element offsets
        np.cumsum(self.n_frames * self.n_mels, out=self.offsets[1:])
        # Copy-on-write mapping: readable like "r", but writable as far as torch.from_numpy is
        # concerned (no warning); nothing here ever writes to it.
        self.frames = np.load(files.frames, mmap_mode="c")  # (total elements,)
        if self.frames.shape != (int(self.offsets[-1]),) or self.frames.dtype != np.dtype(index["dtype"]):
            raise FeatureDataError(f"{files.frames}: holds {self.frames.shape} {self.frames.dtype}, its index "
                                   f"{files.index} says ({self.offsets[-1]},) {index['dtype']}; delete both")
        lengths = np.unique(self.n_frames)
        self.fixed_n_frames = int(lengths[0]) if len(lengths) == 1 else None
        self._batched = None  # (N, n_mels, T) view for equal-length clips
        if self.fixed_n_frames is not None:
            self._batched = self.frames.reshape(len(self), self.n_mels, self.fixed_n_frames)

    @property
    def dtype(self) -> torch.dtype:
        """torch dtype of the stored frames."""
        return torch.float16 if self.frames.dtype == np.float16 else torch.float32

    def __len__(self) -> int:
        return len(self.n_frames)

    def clip(self, index: int) -> np.ndarray:
        """Clip ``index`` as an ``(n_mels, T_i)`` view into the mapped file (no copy)."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.frames[start:end].reshape(self.n_mels, int(self.n_frames[index]))

    def gather(self, indices: Sequence[int] | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Clips ``indices`` stacked as ``(B, n_mels, T)`` (equal-length clips only).

        ``out`` (e.g. a pinned buffer of that shape and the cache's dtype) receives the copy.
        """
        if self._batched is None:
            raise FeatureDataError(f"{self.files.frames}: clips have different lengths "
                                   f"({int(self.n_frames.min())}..{int(self.n_frames.max())} frames); "
                                   "crop them with clip(i) instead of gathering whole clips")
        if out is None:
            out = torch.from_numpy(np.empty((len(indices), self.n_mels, self.fixed_n_frames), self.frames.dtype))
        target = out.numpy()  # (B, n_mels, T), the same memory (pinned or not)
        # One memcpy per clip on this thread (numpy releases the GIL for it). torch.index_select is
        # multi-threaded and, on cores the training step is using, several times slower.
        for row, index in enumerate(indices):
            target[row] = self._batched[index]
        return out


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); blocks until it is free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_cache(files: CacheFiles, list_file: Path, paths: Sequence[Path], dtype: str) -> None:
    """Copy every feature into a new frames file, then write the index (both renamed into place)."""
    shapes = [read_npy_shape(path) for path in paths]
    bad = next((i for i, shape in enumerate(shapes) if len(shape) != 2 or shape[0] != shapes[0][0]), None)
    if bad is not None:
        raise FeatureDataError(f"{paths[bad]}: shape {shapes[bad]}, but {paths[0]} is {shapes[0]}; every feature "
                               "must be (n_mels, frames) with the same n_mels (re-run preprocessing)")
    n_mels = shapes[0][0]
    n_frames = np.array([shape[1] for shape in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_frames * n_mels)])
    log.info("building the feature cache of %s (%d clips, %.1f MB %s) in %s", list_file, len(paths),
             offsets[-1] * np.dtype(dtype).itemsize / 1e6, dtype, files.frames.parent)
    temp = files.frames.with_name(f".{files.frames.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        frames = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=(int(offsets[-1]),))
        for i, path in enumerate(paths):
            try:
                feature = np.load(path)
            except (OSError, ValueError) as error:
                raise FeatureDataError(f"{path}: cannot read feature file ({error}); re-run preprocessing") from None
            if feature.shape != shapes[i]:
                raise FeatureDataError(f"{path}: changed while the feature cache was being built; run again")
            frames[offsets[i]:offsets[i + 1]] = feature.ravel()
        frames.flush()
        del frames
        os.replace(temp, files.frames)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    atomic_write_json(files.index, {"version": CACHE_FORMAT_VERSION, "list_file": str(list_file), "dtype": dtype,
                                    "n_mels": n_mels, "n_frames": n_frames.tolist()})
    keep = {files.frames, files.index, files.lock}
    folder = files.frames.parent
    legacy = [old for pattern in files.legacy_globs for old in folder.glob(pattern)]
    for old in [*folder.glob(files.stale_glob), *legacy]:
        if old not in keep:
            old.unlink(missing_ok=True)  # an older fingerprint of this list (or its old name): stale


def _open_or_build_locked(files: CacheFiles, list_file: Path, paths: Sequence[Path], dtype: str) -> FeatureCache:
    if files.index.is_file():  # up to date, or another process built it while we waited
        return FeatureCache(files)
    build_cache(files, list_file, paths, dtype)
    return FeatureCache(files, built=True)


def open_or_build(list_file: str | Path, datapath: str | Path, paths: Sequence[Path], dtype: str = "float32",
                  info: DistInfo = DistInfo()) -> FeatureCache:
    """The cache of the list read from ``datapath`` (``paths``, its features there): opened when up to
    date, else built once (under the lock) and opened.

    Under torchrun rank 0 takes the lock before the others pass a barrier, so it is the one
    that builds while they wait on the lock (no barrier timeout however long the build takes).
    Afterwards each of them opens the cache, or builds its own where ``list_file``'s folder is
    not shared between machines.
    """
    list_file = Path(list_file)
    files = cache_files(list_file, datapath, paths, dtype)
    if info.enabled and info.is_main and not files.index.is_file():
        at_barrier = False
        try:
            with exclusive_lock(files.lock):
                at_barrier = True
                barrier(info)
                return _open_or_build_locked(files, list_file, paths, dtype)
        finally:
            if not at_barrier:  # rank 0 failed before the barrier: let the others go (and fail alike)
                barrier(info)
    barrier(info)  # every process passes it once; a no-op in a single process
    if files.index.is_file():  # up to date (no lock needed: a read-only folder works too)
        return FeatureCache(files)
    with exclusive_lock(files.lock):
        return _open_or_build_locked(files, list_file, paths, dtype)


def cache_for_dataset(dataset: SpectrogramDataset, dtype: str = "float32",
                      info: DistInfo = DistInfo()) -> FeatureCache | None:
    """The cache of ``dataset``'s list, checked against its feature shape; None (and a warning)
    when it cannot be written beside the list (read-only folder, full disk)."""
    try:
        cache = open_or_build(dataset.list_file, dataset.datapath, dataset.paths, dtype, info)
    except OSError as error:
        log.warning("cannot build the feature cache beside %s (%s); reading one .npy per clip instead "
                    '(set "feature_cache": false to skip the attempt)', dataset.list_file, error)
        return None
    # Whole clips vary in length (each at least n_frames); fixed-length features all have n_frames.
    short = cache.n_frames < dataset.n_frames if dataset.variable_length else cache.n_frames != dataset.n_frames
    differing = np.flatnonzero(short)
    if cache.n_mels != dataset.n_mels or len(differing):
        index = int(differing[0]) if len(differing) else 0
        raise FeatureDataError(f"{dataset.paths[index]}: shape {cache.clip(index).shape} differs from "
                               f"{dataset.feature_shape} of {dataset.paths[0]}; features were made with different "
                               "settings")
    return cache


class CachedClips:
    """A cache as a clip accessor, like ``SpectrogramDataset``: ``load(i)`` is clip ``i`` ``(n_mels, T_i)``
    (a view into the mapped file, in the cache's dtype), plus the dataset's ``labels`` and ``info``."""

    def __init__(self, cache: FeatureCache, dataset: SpectrogramDataset):
        if len(cache) != len(dataset):
            raise ValueError(f"{cache.files.frames} holds {len(cache)} clips, {dataset.list_file} lists {len(dataset)}")
        self.cache, self.labels, self.info = cache, dataset.labels, dataset.info

    def __len__(self) -> int:
        return len(self.cache)

    def load(self, index: int) -> np.ndarray:
        """Clip ``index`` as ``(n_mels, T_i)``."""
        return self.cache.clip(index)


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------

Collate = Callable[[FeatureCache, list[int], bool], torch.Tensor]


class BufferPool:
    """Batch buffers that are handed out again once no tensor uses them any more.

    A fresh 16 MB batch costs the kernel 4096 zeroed pages before the gather even starts; a
    steady training loop drops each batch before it asks for the next few, so a handful of
    warm buffers serve a whole epoch. A buffer is free when only the pool refers to it (a
    tensor made by ``torch.from_numpy`` holds a reference to its array while any view of its
    storage lives), so a caller that keeps batches (``list(loader)``) simply gets new ones.
    """

    def __init__(self, size: int):
        self.size = size
        self.buffers: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A free buffer of ``shape`` and ``dtype`` (contents undefined), else a new one."""
        for index in range(len(self.buffers)):
            # Unused, a buffer has two references: the list's and getrefcount's argument.
            if sys.getrefcount(self.buffers[index]) == 2 and self.buffers[index].shape == shape \
                    and self.buffers[index].dtype == dtype:
                return self.buffers[index]
        buffer = np.empty(shape, dtype=dtype)
        if len(self.buffers) < self.size:
            self.buffers.append(buffer)
        return buffer


def gather_batch(cache: FeatureCache, indices: list[int], pin_memory: bool = False,
                 pool: BufferPool | None = None) -> torch.Tensor:
    """Equal-length clips ``indices`` as ``(B, 1, n_mels, T)`` in the cache's dtype, in one gather.

    With ``pin_memory`` the gather writes straight into page-locked memory (torch's caching host
    allocator reuses those blocks); otherwise into a buffer from ``pool`` when one is given.
    """
    shape = (len(indices), cache.n_mels, cache.fixed_n_frames or 0)
    if pin_memory:
        out = torch.empty(shape, dtype=cache.dtype, pin_memory=True)
    else:
        out = torch.from_numpy(pool.take(shape, cache.frames.dtype) if pool else np.empty(shape, cache.frames.dtype))
    return cache.gather(indices, out=out).unsqueeze(1)


class CachedBatchLoader:
    """``(inputs (B, 1, n_mels, T), labels (B,))`` batches from a ``FeatureCache``; a DataLoader stand-in.

    ``batch_sampler`` yields lists of indices (``torch.utils.data.BatchSampler`` over a random,
    distributed or weighted sampler). An epoch's batches are drawn in the calling thread when
    iteration starts, so random-number use does not depend on ``prefetch``; a background thread
    then gathers up to ``prefetch`` batches ahead of the training step (0: gather in the
    caller's thread). Indices are sorted within a batch (nearby reads; a batch is a set).
    ``collate(cache, indices, pin_memory)`` makes the inputs: ``gather_batch`` by default, or a
    cropping function over ``cache.clip(i)`` for clips of different lengths.
    """

    def __init__(self, cache: FeatureCache, labels: torch.Tensor, batch_sampler: Iterable[list[int]],
                 pin_memory: bool = False, prefetch: int = 2, collate: Collate | None = None):
        if len(labels) != len(cache):
            raise ValueError(f"{len(labels)} labels for a cache of {len(cache)} clips ({cache.files.frames})")
        self.cache, self.labels, self.batch_sampler = cache, labels, batch_sampler
        self.pin_memory, self.prefetch = pin_memory, prefetch
        # Buffers in flight: the queue's, the one being gathered, the step's and the one it just dropped.
        self.collate = collate or partial(gather_batch, pool=BufferPool(prefetch + 3))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def make_batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of one batch of indices."""
        indices = sorted(indices)
        labels = self.labels[indices]  # (B,)
        return self.collate(self.cache, indices, self.pin_memory), labels.pin_memory() if self.pin_memory else labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = [list(batch) for batch in self.batch_sampler]
        if self.prefetch <= 0:
            return map(self.make_batch, batches)
        return prefetched(map(self.make_batch, batches), self.prefetch)


Item = TypeVar("Item")


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_DONE = object()


def prefetched(items: Iterator[Item], depth: int) -> Iterator[Item]:
    """``items`` produced by a background thread, up to ``depth`` ahead of the consumer.

    An error in the producer is raised in the consumer; leaving the loop early stops the thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failure(error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
