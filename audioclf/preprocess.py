"""Feature extraction for a metadata CSV: parallel, resumable, shardable; then split lists.

Layout written under ``save_dir``::

    <relative path of each clip>.npy        float32 (n_mels, n_frames) log-mel; with whole clips
                                            (n_mels, T_i), n_frames <= T_i <= max_frames
    filenames/train.txt validation.txt evaluation.txt
    filenames/skipped.txt                   clips not usable, with the reason
    filenames/feature_config.json           feature parameters, class names, split counts
    filenames/metadata.csv                  copy of the CSV the lists were made from
    filenames/shards/shard-I-of-K.tsv       per-shard status (written / reused / skipped)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import shutil
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audioclf.frontend import AudioReadError, FeatureExtractor, FeatureParams, clip_waveform, read_audio
from audioclf.files import atomic_save_npy, atomic_write_json, atomic_write_text
from audioclf.listfile import (FEATURE_CONFIG, FEATURE_PARAMS_FILE, LISTS_DIR, SKIPPED_FILE, SPLITS, ListEntry,
                               list_path, render_list)
from audioclf.metadata import (AUTO_GROUPS, NO_GROUPS, Clip, MetadataError, Refused,
                               check_folds, empty_split_warnings, fold_refusal_reason, read_metadata,
                               resolve_group_column, split_by_fold, split_random, straddling_groups)

log = logging.getLogger(__name__)

DEVICE_BATCH = 64  # clips per batched transform with --device
SPLIT_SEED = 42  # the stratified split's seed unless --seed gives another
# What features of the same parameters hold, recorded beside them: 2 since yamnet recordings get YAMNet's
# own patch count (whole yamnet clips of 2 % of lengths gained their last patch); unrecorded: 1.
FEATURE_FORMAT = 2


class PreprocessError(RuntimeError):
    """The run cannot produce usable lists; the message says why."""


@dataclass
class PreprocessOptions:
    """Everything one preprocessing run needs (the CLI flags, resolved)."""

    csv_file: Path
    data_dir: Path
    save_dir: Path
    params: FeatureParams = field(default_factory=FeatureParams)
    seed: int = SPLIT_SEED
    num_workers: int = 1
    overwrite: bool = False
    num_shards: int = 1
    shard_index: int = 0
    extract: bool = True
    write_lists: bool = True
    fold_subdirs: bool = False
    device: str | None = None  # None: CPU worker processes; "cuda" / "cpu": batched transforms there
    validation_folds: list[str] = field(default_factory=list)
    evaluation_folds: list[str] = field(default_factory=list)
    # Column whose values are kept in one split; "auto": the CSV's `group` column when it has one.
    group_column: str | None = AUTO_GROUPS


@dataclass
class ClipResult:
    """Outcome for one clip: status is ``written``, ``reused`` or ``skipped``."""

    line: int
    status: str
    reason: str = ""


# ---------------------------------------------------------------------------------------
# Per-clip work (runs in worker processes)
# ---------------------------------------------------------------------------------------

_worker_extractor: FeatureExtractor | None = None


def _ensure_extractor(params: FeatureParams) -> None:
    global _worker_extractor
    if _worker_extractor is None or _worker_extractor.params != params:
        _worker_extractor = FeatureExtractor(params)


def _init_worker(params: FeatureParams) -> None:
    torch.set_num_threads(1)  # parallelism comes from processes; threads would oversubscribe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report, once
    _ensure_extractor(params)


def _skipped(clip: Clip, feature_path: Path, error: Exception) -> ClipResult:
    reason = str(error) if isinstance(error, AudioReadError) else f"unreadable: {type(error).__name__}: {error}"
    feature_path.unlink(missing_ok=True)  # an older feature of a now-unreadable clip must not be listed
    return ClipResult(clip.line, "skipped", reason)


def is_reusable(audio_path: Path, feature_path: Path, overwrite: bool) -> bool:
    """Whether a clip's feature from an earlier run stands: it exists, ``overwrite`` is off, and its
    audio has not changed since it was written (as ``make`` decides: the audio's modification time is
    not newer than the feature's; a file replaced by one that keeps an older time, as ``cp -p`` does,
    needs ``overwrite``). An audio file that is gone keeps its feature."""
    if overwrite or not feature_path.exists():
        return False
    try:
        return audio_path.stat().st_mtime_ns <= feature_path.stat().st_mtime_ns
    except FileNotFoundError:
        return True
    except OSError:  # e.g. a symlink loop: reading it reports the clip as skipped, it must not stop the run
        return False


def process_clip(task: tuple[Clip, Path, Path, bool]) -> ClipResult:
    """Compute and save one clip's feature unless an earlier run's stands (``is_reusable``)."""
    clip, audio_path, feature_path, overwrite = task
    if is_reusable(audio_path, feature_path, overwrite):
        return ClipResult(clip.line, "reused")
    try:
        feature = _worker_extractor.file_to_feature(audio_path)
    except Exception as error:  # a bad file must never stop the run
        return _skipped(clip, feature_path, error)
    atomic_save_npy(feature_path, feature)
    return ClipResult(clip.line, "written")


def _read_fitted(task: tuple[Clip, Path, Path, bool], params: FeatureParams) -> ClipResult | np.ndarray:
    """A clip's waveform as ``clip_waveform`` prepares it (trimmed, fitted to ``n_samples`` unless whole
    clips are kept), or its result when it is reused or unreadable."""
    clip, audio_path, feature_path, overwrite = task
    if is_reusable(audio_path, feature_path, overwrite):
        return ClipResult(clip.line, "reused")
    try:
        audio = read_audio(audio_path, params.sample_rate, max_samples=params.read_samples)
        if audio.size == 0:
            raise AudioReadError("empty: file holds no audio samples")
    except Exception as error:
        return _skipped(clip, feature_path, error)
    return clip_waveform(audio, params)


def process_batch(tasks: list[tuple], extractor: FeatureExtractor, readers: ThreadPoolExecutor) -> list[ClipResult]:
    """Read clips on CPU threads, then one batched log-mel on the extractor's device (e.g. CUDA).

    Whole clips differ in length, so each is transformed on its own (still on the device).
    """
    loaded = list(readers.map(lambda task: _read_fitted(task, extractor.params), tasks))
    ready = [(task, audio) for task, audio in zip(tasks, loaded) if isinstance(audio, np.ndarray)]
    results = [outcome for outcome in loaded if isinstance(outcome, ClipResult)]
    if ready:
        if extractor.params.whole_clips:
            features = [extractor.prepared_clip_feature(audio) for _, audio in ready]  # (n_mels, T_i) each
        else:
            features = extractor.waveforms_to_features(np.stack([audio for _, audio in ready]))  # (B, n_mels, n_frames)
        for (task, _), feature in zip(ready, features):
            atomic_save_npy(task[2], feature)
            results.append(ClipResult(task[0].line, "written"))
    return results


def _chunksize(n_tasks: int, n_workers: int) -> int:
    return max(1, min(32, n_tasks // (n_workers * 8)))


def run_tasks(tasks: list[tuple], params: FeatureParams, num_workers: int, device: str | None = None
              ) -> list[ClipResult]:
    """Compute ``tasks`` with a progress bar: in-process, on a worker pool, or batched on ``device``."""
    progress = tqdm(total=len(tasks), unit="clip", desc="features", smoothing=0.1,
                    disable=not tasks, mininterval=0.5)
    results = []
    if device is not None:
        extractor = FeatureExtractor(params, device)
        with ThreadPoolExecutor(max(1, num_workers)) as readers:
            for start in range(0, len(tasks), DEVICE_BATCH):
                results.extend(process_batch(tasks[start:start + DEVICE_BATCH], extractor, readers))
                progress.update(len(tasks[start:start + DEVICE_BATCH]))
    elif num_workers <= 1 or len(tasks) < 2:
        _ensure_extractor(params)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one clip is too small to split; threads only add overhead
        try:
            for task in tasks:
                results.append(process_clip(task))
                progress.update()
        finally:
            torch.set_num_threads(threads)
    else:
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with context.Pool(num_workers, initializer=_init_worker, initargs=(params,)) as pool:
            for result in pool.imap_unordered(process_clip, tasks, _chunksize(len(tasks), num_workers)):
                results.append(result)
                progress.update()
    progress.close()
    return results


# ---------------------------------------------------------------------------------------
# Run bookkeeping
# ---------------------------------------------------------------------------------------

def check_or_record_params(lists_dir: Path, params: FeatureParams, overwrite: bool) -> None:
    """Refuse to mix features made with other parameters into ``save_dir`` (unless overwrite)."""
    path = lists_dir / FEATURE_PARAMS_FILE
    unfinished = sorted((lists_dir / "shards").glob("*.overwrite-in-progress"))
    if unfinished and not overwrite:
        raise PreprocessError(
            f"an earlier --overwrite run into {lists_dir.parent} did not finish ({unfinished[0].name}), so old and "
            "new features may be mixed; run again with --overwrite")
    if path.exists() and not overwrite:
        data = json.loads(path.read_text())
        recorded = FeatureParams.from_dict(data)
        if recorded != params:
            changed = {key: (value, asdict(params)[key]) for key, value in asdict(recorded).items()
                       if asdict(params)[key] != value}
            raise PreprocessError(
                f"{path.parent.parent} holds features made with other parameters "
                f"(recorded -> requested: {changed}); pass --overwrite to recompute them all, "
                "or choose another --save_dir")
        if params.frontend == "yamnet" and params.whole_clips and data.get("feature_format", 1) < FEATURE_FORMAT:
            raise PreprocessError(
                f"{path.parent.parent} holds whole yamnet clips made before they got YAMNet's own patch count "
                "(some lack their last patch); pass --overwrite to recompute them, or choose another --save_dir")
        return
    atomic_write_json(path, {**params.to_dict(), "feature_format": FEATURE_FORMAT})


def shard_path(lists_dir: Path, shard_index: int, num_shards: int) -> Path:
    """Where shard ``shard_index`` of ``num_shards`` records its per-clip status."""
    return lists_dir / "shards" / f"shard-{shard_index}-of-{num_shards}.tsv"


def write_shard_status(path: Path, results: list[ClipResult]) -> None:
    """Record ``line<TAB>status<TAB>reason`` per clip, for the list-writing step."""
    rows = sorted(results, key=lambda result: result.line)
    atomic_write_text(path, "line\tstatus\treason\n" + "".join(
        f"{r.line}\t{r.status}\t{r.reason}\n" for r in rows))


def read_skip_reasons(lists_dir: Path, num_shards: int) -> dict[int, str]:
    """Skip reasons by CSV line, from the status files of this run's ``num_shards`` shards."""
    reasons = {}
    for path in sorted((lists_dir / "shards").glob(f"shard-*-of-{num_shards}.tsv")):
        for row in path.read_text().splitlines()[1:]:
            line, status, reason = (row.split("\t") + ["", ""])[:3]
            if status == "skipped":
                reasons[int(line)] = reason
    return reasons


# ---------------------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------------------

def _entries(clips: list[Clip]) -> list[ListEntry]:
    return [ListEntry(clip.feature_file, clip.class_id, clip.class_name) for clip in clips]


def is_grouped(clips: list[Clip]) -> bool:
    """True when the clips were read with a group column (a grouped split)."""
    return bool(clips) and clips[0].group is not None


def make_splits(clips: list[Clip], class_names: list[str], options: PreprocessOptions) -> dict[str, list[Clip]]:
    """Fold-column split when folds are named, else the seeded stratified 80/10/10 split (by group if any)."""
    if options.validation_folds or options.evaluation_folds:
        return split_by_fold(clips, options.validation_folds, options.evaluation_folds, len(class_names),
                             options.seed, by_group=is_grouped(clips))
    return split_random(clips, len(class_names), options.seed, by_group=is_grouped(clips))


def split_summary(options: PreprocessOptions, splits: dict[str, list[Clip]]) -> dict:
    """The ``split`` entry of feature_config.json: method, its parameters and the grouping."""
    if options.validation_folds or options.evaluation_folds:
        summary = {"method": "fold", "validation_folds": options.validation_folds,
                   "evaluation_folds": options.evaluation_folds}
    else:
        summary = {"method": "random_stratified", "seed": options.seed, "n_folds": 10}
    clips = [clip for members in splits.values() for clip in members]
    if is_grouped(clips):
        straddling = straddling_groups(splits)
        summary.update(group_column=options.group_column, n_groups=len({clip.group for clip in clips}),
                       groups_in_several_splits=len(straddling))
    return summary


def log_grouping(options: PreprocessOptions, split: dict, requested: str | None) -> None:
    """Say how groups were used (and how to turn that off), or warn when a fold split leaks groups."""
    if "group_column" not in split:
        return
    auto = requested == AUTO_GROUPS
    groups = (f"{split['n_groups']} groups of the CSV's {split['group_column']!r} column"
              + (f" (used automatically; --group_column {NO_GROUPS} turns it off)" if auto else ""))
    if split["method"] == "fold" and options.validation_folds:
        log.info("split by the fold column; %s: %d in several splits", groups, split["groups_in_several_splits"])
    else:
        log.info("grouped split: whole groups dealt into the folds, stratified by class; %s", groups)
    if split["groups_in_several_splits"]:
        log.warning("%d group(s) of column %r have clips in more than one split (the CSV's folds separate "
                    "them): those clips leak between training and evaluation", split["groups_in_several_splits"],
                    split["group_column"])


def write_lists(options: PreprocessOptions, clips: list[Clip], refused: list[Refused],
                class_names: list[str]) -> dict:
    """Write split lists, skipped.txt and feature_config.json from the features on disk."""
    lists_dir = options.save_dir / LISTS_DIR
    reasons = read_skip_reasons(lists_dir, options.num_shards)
    usable = [clip for clip in clips if clip.line not in reasons and (options.save_dir / clip.feature_file).exists()]
    usable_lines = {clip.line for clip in usable}
    skipped = [(r.line, r.slice_file_name, r.reason) for r in refused] + [
        (clip.line, clip.slice_file_name, reasons.get(clip.line, "not processed: no feature file (run every shard)"))
        for clip in clips if clip.line not in usable_lines]
    skipped.sort()
    # Split every CSV clip, then keep the usable ones: fixing or losing one file never moves
    # the other clips between splits (no training clip can drift into evaluation).
    splits = {split: [clip for clip in members if clip.line in usable_lines]
              for split, members in make_splits(clips, class_names, options).items()}
    for split in SPLITS:
        atomic_write_text(list_path(lists_dir, split), render_list(_entries(splits[split])))
    atomic_write_text(lists_dir / SKIPPED_FILE, "line\tslice_file_name\treason\n" + "".join(
        f"{line}\t{name if name.isprintable() else repr(name)}\t{reason}\n" for line, name, reason in skipped))
    if options.csv_file.resolve() != (lists_dir / "metadata.csv").resolve():
        shutil.copyfile(options.csv_file, lists_dir / "metadata.csv")
    counts = {split: {name: sum(c.class_id == i for c in splits[split]) for i, name in enumerate(class_names)}
              for split in SPLITS}
    config = {
        "feature_params": options.params.to_dict(),
        "class_names": class_names,
        "n_classes": len(class_names),
        "split": split_summary(options, splits),
        "counts": counts,
        "n_skipped": len(skipped),
        "source_csv": str(options.csv_file),
        "data_dir": str(options.data_dir),
    }
    if options.params.whole_clips:
        listed = [clip for members in splits.values() for clip in members]
        config["whole_clips"] = whole_clip_summary(options.save_dir, listed, options.params)
    atomic_write_json(lists_dir / FEATURE_CONFIG, config)
    return {"splits": splits, "skipped": skipped, "config": config}


def whole_clip_summary(save_dir: Path, clips: list[Clip], params: FeatureParams) -> dict:
    """Lengths of the variable-length features (from their headers): bounds and total frames."""
    lengths = [np.load(save_dir / clip.feature_file, mmap_mode="r").shape[1] for clip in clips]
    return {"max_seconds": params.max_seconds, "min_frames": params.n_frames, "max_frames": params.max_frames,
            "shortest": min(lengths, default=0), "longest": max(lengths, default=0),
            "total_frames": int(sum(lengths)),
            "n_at_max_frames": sum(length == params.max_frames for length in lengths)}  # cut there, or exactly as long


def check_outcome(outcome: dict, class_names: list[str]) -> list[str]:
    """Warnings about empty splits; PreprocessError when nothing or some class is unusable."""
    splits = outcome["splits"]
    unprocessed = [name for _, name, reason in outcome["skipped"] if reason.startswith("not processed")]
    if unprocessed:
        raise PreprocessError(
            f"{len(unprocessed)} clip(s) have no feature yet (e.g. {unprocessed[0]}); run every shard "
            "(--shard_index 0..K-1) before --write_lists. The lists written now are incomplete")
    total = sum(len(members) for members in splits.values())
    if total == 0:
        reasons = Counter(reason.split(":")[0] for _, _, reason in outcome["skipped"])
        hint = ""
        if set(reasons) == {"missing"}:
            hint = (" Every file was missing: check --data_dir (clips are read from --data_dir/"
                    "<slice_file_name>; for UrbanSound8K's fold<N>/ folders add --fold_subdirs).")
        raise PreprocessError(f"no usable clip remains ({dict(reasons)}); see {LISTS_DIR}/{SKIPPED_FILE}.{hint}")
    per_class = Counter(clip.class_id for members in splits.values() for clip in members)
    lost = [f"{name!r} (classID {i})" for i, name in enumerate(class_names) if per_class[i] == 0]
    warnings = empty_split_warnings(splits, class_names, by_group=is_grouped(
        [clip for members in splits.values() for clip in members]))
    for message in warnings:
        log.warning(message)
    if lost:
        raise PreprocessError(
            f"class(es) {', '.join(lost)} have no usable clip; see {LISTS_DIR}/{SKIPPED_FILE}. "
            "Fix or remove those rows, or the classIDs")
    return warnings


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------

def log_summary(results: list[ClipResult], clips: list[Clip], seconds: float) -> None:
    """One summary block: written / reused / skipped per class, and the skip reasons."""
    by_line = {clip.line: clip for clip in clips}
    table = Counter((by_line[r.line].class_name, r.status) for r in results)
    statuses = ("written", "reused", "skipped")
    rate = len(results) / seconds if seconds > 0 else float("inf")
    log.info("processed %d clips in %.1f s (%.1f clips/s): %s", len(results), seconds, rate,
             ", ".join(f"{sum(v for (c, s), v in table.items() if s == status)} {status}" for status in statuses))
    for name in sorted({clip.class_name for clip in clips}):
        log.info("  %-24s %s", name, "  ".join(f"{status} {table[(name, status)]:>5d}" for status in statuses))
    reasons = Counter(r.reason.split(":")[0] for r in results if r.status == "skipped")
    if reasons:
        log.warning("skipped clips by reason: %s (details in %s/%s)", dict(reasons), LISTS_DIR, SKIPPED_FILE)


def refuse_bad_folds(clips: list[Clip], refused: list[Refused]) -> tuple[list[Clip], list[Refused]]:
    """With --fold_subdirs the fold names a folder: refuse rows whose fold is not a whole number."""
    kept = []
    for clip in clips:
        reason = fold_refusal_reason(clip.fold)
        if reason:
            log.warning("line %d: %s (%s)", clip.line, reason, clip.slice_file_name)
            refused.append(Refused(clip.line, clip.slice_file_name, reason))
        else:
            kept.append(clip)
    return kept, sorted(refused, key=lambda row: row.line)


def audio_path(options: PreprocessOptions, clip: Clip) -> Path:
    """``data_dir/slice_file_name``, or ``data_dir/fold<fold>/slice_file_name`` (UrbanSound8K layout)."""
    if options.fold_subdirs:
        if clip.fold is None:
            raise PreprocessError("--fold_subdirs needs a 'fold' column in the metadata CSV")
        return options.data_dir / f"fold{clip.fold}" / clip.slice_file_name
    return options.data_dir / clip.slice_file_name


def run_preprocessing(options: PreprocessOptions) -> dict:
    """Extract this shard's features, then (unless sharded without --write_lists) the lists."""
    options.params.validate()
    if not 0 <= options.shard_index < options.num_shards:
        raise PreprocessError(f"--shard_index must be in [0, {options.num_shards}), got {options.shard_index}")
    requested_groups = options.group_column
    options = dataclasses.replace(options, group_column=resolve_group_column(options.csv_file, requested_groups))
    clips, refused, class_names = read_metadata(options.csv_file, options.group_column)
    if options.fold_subdirs and clips and clips[0].fold is not None:
        clips, refused = refuse_bad_folds(clips, refused)
    if options.write_lists and (options.validation_folds or options.evaluation_folds):
        check_folds(clips, options.validation_folds, options.evaluation_folds)  # before minutes of extraction
    if not options.data_dir.is_dir():
        raise PreprocessError(f"--data_dir {options.data_dir} is not a folder")
    lists_dir = options.save_dir / LISTS_DIR
    check_or_record_params(lists_dir, options.params, options.overwrite)
    shard = clips[options.shard_index::options.num_shards]
    tasks = [(clip, audio_path(options, clip), options.save_dir / clip.feature_file,
              options.overwrite) for clip in shard]
    results = []
    if options.extract:
        status_path = shard_path(lists_dir, options.shard_index, options.num_shards)
        marker = status_path.with_suffix(".overwrite-in-progress")
        if options.overwrite:
            atomic_write_text(marker, "features are being recomputed with --overwrite\n")
        start = time.perf_counter()
        results = run_tasks(tasks, options.params, options.num_workers, options.device)
        write_shard_status(status_path, results)
        marker.unlink(missing_ok=True)
        log_summary(results, shard, time.perf_counter() - start)
    outcome = {"results": results, "class_names": class_names}
    if options.write_lists:
        outcome.update(write_lists(options, clips, refused, class_names))
        log_grouping(options, outcome["config"]["split"], requested_groups)
        outcome["warnings"] = check_outcome(outcome, class_names)
        counts = {split: len(members) for split, members in outcome["splits"].items()}
        log.info("lists in %s: %s; %d skipped", lists_dir, counts, len(outcome["skipped"]))
    return outcome


__all__ = ["PreprocessOptions", "PreprocessError", "MetadataError", "run_preprocessing", "write_lists",
           "process_clip"]
