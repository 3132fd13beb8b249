"""DCASE 2017 task 2-style soundscapes for testing a detector: background chains, one event in half.

    python -m tools.soundscapes --csv_file data/demo/metadata.csv --data_dir data/demo/audio \\
        --list features/demo/filenames/evaluation.txt --target_class babycry \\
        --out data/demo/soundscapes/evaluation --n_mixtures 60 --seed 0 [--duration 30] [--ebr -6 0 6]

Only the clips of ``--list`` are used (a split list of feature files, or a CSV with a
``slice_file_name`` column): build test soundscapes from evaluation clips and tuning soundscapes
from validation clips, so neither shares a sound with training. Each mixture (after DCASE 2017
task 2, "rare sound event detection")::

    background = non-target clips of the list, in a seeded order without repeats, each scaled to
                 BACKGROUND_RMS_DBFS and chained with CROSSFADE_S equal-power cross-fades,
                 cut to --duration seconds
    event      = in half of the mixtures, one whole target clip at a seeded onset (EDGE_MARGIN_S
                 clear of both ends), scaled so that its RMS is EBR dB above (or below) the
                 background's RMS over the event's own samples; EBRs cycle over --ebr
    mixture    = background + event, scaled down as a whole (EBR kept) if its peak would pass
                 PEAK_LIMIT

Written to ``--out`` (one folder per split; old mixtures this tool wrote there are replaced):

``mixture_NNNN.wav``
    Mono PCM-16 at the feature sample rate (``feature_config.json`` beside the list, else
    ``--sample_rate``), byte-identical for the same inputs and seed.
``events.csv``
    The reference events (``audioclf.events`` CSV: file, class, onset_s, offset_s): the event's
    first and one-past-last sample over the rate (onsets on whole milliseconds at rates that are
    multiples of 1 kHz; times rounded to 1 ms in the CSV).
``parts.csv``
    One row per part of each mixture: ``file, part (background or event), clip, start_s, end_s,
    ebr_db, event_gain, output_gain`` (spans in the mixture, cross-fades included).
``manifest.json``
    The seed, inputs, settings and counts.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audioclf.events import (REFERENCE_CSV_COLUMNS, SOUNDSCAPE_EVENTS_FILE, SOUNDSCAPE_MANIFEST_FILE,
                             SOUNDSCAPE_PARTS_COLUMNS, SOUNDSCAPE_PARTS_FILE, Event, write_events_csv)
from audioclf.files import atomic_write_json, atomic_write_text, make_folder
from audioclf.frontend import AudioReadError, FeatureParams, read_audio, write_audio
from audioclf.listfile import FEATURE_CONFIG, read_list
from audioclf.metadata import Clip, MetadataError, read_metadata
from audioclf.runtime import setup_logging

log = logging.getLogger("tools.soundscapes")

MIXTURE_SECONDS = 30.0
EBR_DB = (-6.0, 0.0, 6.0)
CROSSFADE_S = 0.1
BACKGROUND_RMS_DBFS = -30.0
EDGE_MARGIN_S = 0.5  # events start and end at least this far from the mixture's ends
PEAK_LIMIT = 0.99
MIXTURE_PREFIX = "mixture_"
EVENTS_FILE = SOUNDSCAPE_EVENTS_FILE
MANIFEST_FILE = SOUNDSCAPE_MANIFEST_FILE
PARTS_FILE = SOUNDSCAPE_PARTS_FILE
PARTS_COLUMNS = SOUNDSCAPE_PARTS_COLUMNS
GENERATOR = "tools.soundscapes"
GENERATOR_VERSION = 2  # 2: parts.csv names each clip's class


class SoundscapeError(ValueError):
    """Inputs that cannot make soundscapes; the message names the file, row or flag and the fix."""


@dataclass(frozen=True)
class Segment:
    """One background clip in a mixture: ``[start, start + n_samples)`` of the mixture (fade included)."""

    clip: str
    start: int
    n_samples: int


@dataclass(frozen=True)
class EventPlan:
    """The target event of a mixture."""

    clip: str
    onset: int  # first sample
    n_samples: int
    ebr_db: float


@dataclass(frozen=True)
class MixturePlan:
    """Everything that defines one mixture's samples."""

    file: str
    n_samples: int
    background: tuple[Segment, ...]
    event: EventPlan | None


@dataclass
class Mixture:
    """A rendered mixture and its parts (float64): ``mixture == output_gain * (background + event)``."""

    plan: MixturePlan
    background: np.ndarray  # (n_samples,)
    event: np.ndarray  # (n_samples,), zero outside the event
    event_gain: float  # event = event_gain * clip on its span
    output_gain: float

    @property
    def mixture(self) -> np.ndarray:
        """What is written to the WAV: ``(n_samples,)`` float64 in [-PEAK_LIMIT, PEAK_LIMIT]."""
        return self.output_gain * (self.background + self.event)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

def listed_clips(csv_file: str | Path, list_file: str | Path) -> list[Clip]:
    """The metadata rows of the clips named by ``list_file`` (split list or CSV), in list order."""
    clips, refused, _ = read_metadata(csv_file)
    list_file = Path(list_file)
    if not list_file.is_file():
        raise SoundscapeError(f"--list {list_file}: file not found")
    by_feature = {clip.feature_file: clip for clip in clips}
    by_name = {clip.slice_file_name: clip for clip in clips}
    refused_reason = {row.slice_file_name: row.reason for row in refused}
    refused_reason.update({str(Path(row.slice_file_name).with_suffix(".npy")): row.reason for row in refused})
    if list_file.suffix.lower() == ".csv":
        with open(list_file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "slice_file_name" not in (reader.fieldnames or []):
                raise SoundscapeError(f"--list {list_file}: a CSV list needs a 'slice_file_name' column "
                                      f"(columns: {', '.join(reader.fieldnames or [])})")
            named = [(reader.line_num, row["slice_file_name"].strip()) for row in reader]  # the row's line
        lookup = by_name
    else:
        named = [(entry.line_number, entry.feature_file) for entry in read_list(list_file)]
        lookup = by_feature
    selected = []
    for line, name in named:
        if name in refused_reason:
            raise SoundscapeError(f"{list_file}:{line}: {name!r} cannot be used ({refused_reason[name]})")
        if name not in lookup:
            raise SoundscapeError(f"{list_file}:{line}: {name!r} is not a clip of {csv_file}; build soundscapes "
                                  "with the metadata CSV the list was made from")
        selected.append(lookup[name])
    return selected


def clip_path(data_dir: str | Path, clip: Clip) -> Path:
    """The clip's file under ``data_dir``, as preprocessing reads it: ``read_metadata`` has refused the
    paths that leave the folder by their spelling (absolute, ``..``); links the user put inside it
    (e.g. to audio on another disk) are followed."""
    return Path(data_dir) / clip.slice_file_name


def feature_sample_rate(list_file: str | Path, sample_rate: int | None = None) -> int:
    """``sample_rate`` if given, else the one in ``feature_config.json`` beside the list, else the default."""
    if sample_rate is not None:
        return sample_rate
    config = Path(list_file).parent / FEATURE_CONFIG
    if config.is_file():
        try:
            return int(json.loads(config.read_text())["feature_params"]["sample_rate"])
        except (ValueError, KeyError, TypeError) as error:
            raise SoundscapeError(f"{config}: no feature_params.sample_rate ({error}); pass --sample_rate") from None
    return FeatureParams().sample_rate


def rms(audio: np.ndarray) -> float:
    """Root mean square (0 for no samples)."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def load_clips(clips: Sequence[Clip], data_dir: str | Path, sample_rate: int) -> dict[str, np.ndarray]:
    """``slice_file_name -> mono float64 audio at sample_rate``; unreadable or silent clips are left out (logged)."""
    audio = {}
    for clip in clips:
        path = clip_path(data_dir, clip)
        try:
            samples = read_audio(path, sample_rate).astype(np.float64)
        except AudioReadError as error:
            log.warning("skipping %s: %s", path, error)
            continue
        if rms(samples) == 0.0:
            log.warning("skipping %s: silent", path)
            continue
        audio[clip.slice_file_name] = samples
    return audio


# ---------------------------------------------------------------------------------------
# Planning and rendering
# ---------------------------------------------------------------------------------------

def plan_background(names: Sequence[str], lengths: dict[str, int], n_samples: int, fade: int,
                    rng: np.random.Generator) -> tuple[Segment, ...]:
    """Clips in seeded order, each overlapping the previous by a cross-fade, until ``n_samples`` are filled.

    A clip repeats only when all of them together (less their cross-fades) are shorter than a mixture.
    """
    segments: list[Segment] = []
    cursor = 0  # end of the previous clip
    while cursor < n_samples:
        for index in rng.permutation(len(names)):
            name = names[index]
            overlap = min(fade, lengths[name] // 2, segments[-1].n_samples // 2) if segments else 0
            start = cursor - overlap
            segments.append(Segment(name, start, lengths[name]))
            cursor = start + lengths[name]
            if cursor >= n_samples:
                break
    return tuple(segments)


def seeded_cycles(items: Sequence, n: int, rng: np.random.Generator) -> list:
    """``n`` items: one seeded shuffle of ``items`` after another, so each is used as often as the others."""
    order: list = []
    while len(order) < n:
        order.extend(items[i] for i in rng.permutation(len(items)))
    return order[:n]


def plan_soundscapes(background: dict[str, np.ndarray], targets: dict[str, np.ndarray], n_mixtures: int,
                     seed: int, sample_rate: int, duration_s: float = MIXTURE_SECONDS,
                     ebr_db: Sequence[float] = EBR_DB) -> list[MixturePlan]:
    """The seeded plan: mixtures with an even index carry one event; targets and EBRs cycle in seeded orders."""
    n_samples = round(duration_s * sample_rate)
    margin = round(EDGE_MARGIN_S * sample_rate)
    fade = round(CROSSFADE_S * sample_rate)
    lengths = {name: len(audio) for name, audio in {**background, **targets}.items()}
    background_names = list(background)
    usable_targets = [name for name in targets if lengths[name] <= n_samples - 2 * margin]
    for name in targets:
        if name not in usable_targets:
            log.warning("target clip %s (%.2f s) does not fit a %.1f s mixture with %.1f s margins; not used",
                        name, lengths[name] / sample_rate, duration_s, EDGE_MARGIN_S)
    if not usable_targets:
        raise SoundscapeError(f"no target clip fits a {duration_s} s mixture (with {EDGE_MARGIN_S} s margins); "
                              "raise --duration")
    plan_rng = np.random.default_rng([seed, 0])
    n_events = (n_mixtures + 1) // 2
    target_order = seeded_cycles(usable_targets, n_events, plan_rng)
    ebr_order = seeded_cycles([float(value) for value in ebr_db], n_events, plan_rng)
    plans = []
    for index in range(n_mixtures):
        rng = np.random.default_rng([seed, 1, index])
        segments = plan_background(background_names, lengths, n_samples, fade, rng)
        event = None
        if index % 2 == 0:
            number = index // 2
            clip = target_order[number]
            # Onsets on whole milliseconds, so the reference CSV's times are exact.
            first_ms = math.ceil(margin * 1000 / sample_rate)
            last_ms = math.floor((n_samples - margin - lengths[clip]) * 1000 / sample_rate)
            onset_ms = int(rng.integers(first_ms, max(first_ms, last_ms) + 1))
            event = EventPlan(clip, round(onset_ms * sample_rate / 1000), lengths[clip], float(ebr_order[number]))
        plans.append(MixturePlan(f"{MIXTURE_PREFIX}{index:04d}.wav", n_samples, segments, event))
    return plans


def equal_power_fades(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fade-in and fade-out ``(n,)`` with ``fade_in**2 + fade_out**2 == 1`` (for uncorrelated sounds)."""
    angle = (np.arange(n) + 0.5) / n * (np.pi / 2)
    return np.sin(angle), np.cos(angle)


def render_mixture(plan: MixturePlan, audio: dict[str, np.ndarray]) -> Mixture:
    """The samples of a planned mixture, its background and its event kept apart."""
    level = 10.0 ** (BACKGROUND_RMS_DBFS / 20.0)
    longest = max(segment.n_samples for segment in plan.background)
    background = np.zeros(plan.n_samples + longest)
    previous_end = 0
    for segment in plan.background:
        clip = audio[segment.clip] * (level / rms(audio[segment.clip]))
        overlap = previous_end - segment.start
        if overlap > 0:
            fade_in, fade_out = equal_power_fades(overlap)
            clip = clip.copy()
            clip[:overlap] *= fade_in
            background[segment.start:previous_end] *= fade_out  # only the previous clip's tail is there
        background[segment.start:segment.start + segment.n_samples] += clip
        previous_end = segment.start + segment.n_samples
    background = background[:plan.n_samples]
    event = np.zeros(plan.n_samples)
    event_gain = 0.0
    if plan.event is not None:
        span = slice(plan.event.onset, plan.event.onset + plan.event.n_samples)
        clip = audio[plan.event.clip]
        event_gain = 10.0 ** (plan.event.ebr_db / 20.0) * rms(background[span]) / rms(clip)
        event[span] = event_gain * clip
    peak = float(np.max(np.abs(background + event)))
    output_gain = min(1.0, PEAK_LIMIT / peak) if peak > 0 else 1.0
    return Mixture(plan, background, event, event_gain, output_gain)


def measured_ebr_db(mixture: Mixture) -> float:
    """Event-to-background ratio over the event's samples, in dB (NaN without an event)."""
    if mixture.plan.event is None:
        return math.nan
    span = slice(mixture.plan.event.onset, mixture.plan.event.onset + mixture.plan.event.n_samples)
    return 20.0 * math.log10(rms(mixture.event[span]) / rms(mixture.background[span]))


def reference_event(plan: MixturePlan, target_class: str, sample_rate: int) -> Event | None:
    """The mixture's reference event (times in s), or None."""
    if plan.event is None:
        return None
    return Event(plan.file, target_class, plan.event.onset / sample_rate,
                 (plan.event.onset + plan.event.n_samples) / sample_rate)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

def _clear_previous(out: Path) -> None:
    """Remove the mixtures of an earlier run (its ``manifest.json`` says this tool wrote the folder).

    Refuses a folder with other WAV files: detection over the folder would score them too.
    """
    manifest = out / MANIFEST_FILE
    if manifest.is_file():
        try:
            generator = json.loads(manifest.read_text()).get("generator")
        except (ValueError, AttributeError) as error:
            raise SoundscapeError(f"{manifest}: unreadable ({error}); remove --out {out} or pick another") from None
        if generator == GENERATOR:  # its mixtures and references go together: none may outlive the others
            for path in [*out.glob(f"{MIXTURE_PREFIX}*.wav"), out / EVENTS_FILE, out / PARTS_FILE]:
                path.unlink(missing_ok=True)
    others = sorted(path.name for path in out.glob("*.wav")) if out.is_dir() else []
    if others:
        shown = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
        raise SoundscapeError(f"--out {out} holds WAV files this tool did not write ({shown}); detection would "
                              "score them too, so choose an empty folder")


def parts_csv_text(plans: Sequence[MixturePlan], gains: Sequence[tuple[float, float]], sample_rate: int,
                   classes: dict[str, str]) -> str:
    """``parts.csv``: one row per background clip and event of every mixture; ``gains``: (event, output) per
    mixture; ``classes``: each clip's class name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PARTS_COLUMNS)
    for plan, (event_gain, output_gain) in zip(plans, gains):
        for segment in plan.background:
            end = min(segment.start + segment.n_samples, plan.n_samples)
            writer.writerow([plan.file, "background", segment.clip, f"{segment.start / sample_rate:.6f}",
                             f"{end / sample_rate:.6f}", "", "", f"{output_gain:.6f}", classes[segment.clip]])
        if plan.event is not None:
            writer.writerow([plan.file, "event", plan.event.clip, f"{plan.event.onset / sample_rate:.6f}",
                             f"{(plan.event.onset + plan.event.n_samples) / sample_rate:.6f}",
                             f"{plan.event.ebr_db:g}", f"{event_gain:.6f}", f"{output_gain:.6f}",
                             classes[plan.event.clip]])
    return buffer.getvalue()


def load_sources(csv_file: str | Path, data_dir: str | Path, list_file: str | Path, target_class: str,
                 sample_rate: int, duration_s: float = MIXTURE_SECONDS) -> tuple[dict[str, np.ndarray],
                                                                                 dict[str, np.ndarray],
                                                                                 dict[str, str]]:
    """``(targets, background, classes)``: the list's target and other clips, read at ``sample_rate``,
    checked, and each listed clip's class name."""
    if not Path(data_dir).is_dir():
        raise SoundscapeError(f"--data_dir {data_dir}: folder not found")
    clips = listed_clips(csv_file, list_file)
    target_clips = [clip for clip in clips if clip.class_name == target_class]
    if not target_clips:
        classes = sorted({clip.class_name for clip in clips})
        raise SoundscapeError(f"--list {list_file} has no clip of --target_class {target_class!r} "
                              f"(its classes: {', '.join(classes) or 'none'})")
    targets = load_clips(target_clips, data_dir, sample_rate)
    if not targets:
        raise SoundscapeError(f"none of the {len(target_clips)} {target_class!r} clips of {list_file} is readable")
    background = load_clips([clip for clip in clips if clip.class_name != target_class], data_dir, sample_rate)
    background_s = sum(len(audio) for audio in background.values()) / sample_rate
    if background_s < duration_s:
        raise SoundscapeError(
            f"--list {list_file}: its {len(background)} readable non-{target_class} clips hold {background_s:.1f} s "
            f"of audio, less than one {duration_s:g} s mixture; use a longer list or a shorter --duration")
    return targets, background, {clip.slice_file_name: clip.class_name for clip in clips}


def build_soundscapes(csv_file: str | Path, data_dir: str | Path, list_file: str | Path, target_class: str,
                      out: str | Path, n_mixtures: int, seed: int, duration_s: float = MIXTURE_SECONDS,
                      ebr_db: Sequence[float] = EBR_DB, sample_rate: int | None = None) -> dict:
    """Write the mixtures, ``events.csv``, ``parts.csv`` and ``manifest.json`` into ``out``; returns the manifest."""
    if n_mixtures < 1:
        raise SoundscapeError(f"--n_mixtures must be >= 1, got {n_mixtures}")
    if not duration_s > 2 * EDGE_MARGIN_S:
        raise SoundscapeError(f"--duration must be more than {2 * EDGE_MARGIN_S} s, got {duration_s}")
    if not ebr_db:
        raise SoundscapeError("--ebr needs at least one value (dB)")
    if not all(math.isfinite(value) for value in ebr_db):
        raise SoundscapeError(f"--ebr values must be finite numbers of dB, got {list(ebr_db)}")
    if not math.isfinite(duration_s):
        raise SoundscapeError(f"--duration must be a finite number of seconds, got {duration_s}")
    sample_rate = feature_sample_rate(list_file, sample_rate)
    targets, background, classes = load_sources(csv_file, data_dir, list_file, target_class, sample_rate, duration_s)
    plans = plan_soundscapes(background, targets, n_mixtures, seed, sample_rate, duration_s, ebr_db)

    out = make_folder(out, "--out folder")
    _clear_previous(out)
    audio = {**background, **targets}
    # Marks the folder as this tool's while it fills: an interrupted build is cleared by the next one, and
    # without events.csv and parts.csv (written last) nothing trains or tunes on it meanwhile.
    atomic_write_json(out / MANIFEST_FILE, {"generator": GENERATOR, "generator_version": GENERATOR_VERSION,
                                            "complete": False})
    gains, events = [], []
    for plan in plans:
        mixture = render_mixture(plan, audio)
        write_audio(out / plan.file, mixture.mixture.astype(np.float32), sample_rate)
        gains.append((mixture.event_gain, mixture.output_gain))
        reference = reference_event(plan, target_class, sample_rate)
        if reference is not None:
            events.append(reference)
    write_events_csv(events, out / EVENTS_FILE, REFERENCE_CSV_COLUMNS)
    atomic_write_text(out / PARTS_FILE, parts_csv_text(plans, gains, sample_rate, classes))
    manifest = {
        "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": seed,
        "csv_file": str(csv_file), "list": str(list_file), "target_class": target_class,
        "sample_rate": sample_rate, "duration_s": duration_s, "ebr_db": [float(value) for value in ebr_db],
        "crossfade_s": CROSSFADE_S, "background_rms_dbfs": BACKGROUND_RMS_DBFS, "edge_margin_s": EDGE_MARGIN_S,
        "n_mixtures": n_mixtures, "n_events": len(events), "n_target_clips": len(targets),
        "n_background_clips": len(background), "events": EVENTS_FILE, "parts": PARTS_FILE, "complete": True,
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--csv_file", required=True, type=Path, help="metadata CSV (slice_file_name, classID, class)")
    parser.add_argument("--data_dir", required=True, type=Path, help="folder the CSV's paths are relative to")
    parser.add_argument("--list", required=True, type=Path,
                        help="clips to use: a split list (e.g. features/x/filenames/evaluation.txt) or a CSV "
                             "with a slice_file_name column")
    parser.add_argument("--target_class", required=True, help="class of the events (all other classes: background)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n_mixtures", required=True, type=int, help="number of mixtures (half get an event)")
    parser.add_argument("--seed", required=True, type=int, help="random seed")
    parser.add_argument("--duration", type=float, default=MIXTURE_SECONDS, help="mixture length (s)")
    parser.add_argument("--ebr", type=float, nargs="+", default=list(EBR_DB),
                        help="event-to-background ratios (dB), cycled over the events")
    parser.add_argument("--sample_rate", type=int, default=None,
                        help=f"output rate (default: the {FEATURE_CONFIG} beside --list, else "
                             f"{FeatureParams().sample_rate})")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Build the soundscapes; 0 on success, 1 with the reason logged."""
    try:
        manifest = build_soundscapes(args.csv_file, args.data_dir, args.list, args.target_class, args.out,
                                     args.n_mixtures, args.seed, args.duration, args.ebr, args.sample_rate)
    except (SoundscapeError, MetadataError, ValueError, OSError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to build %s", args.out)
        return 130
    log.info("wrote %d mixtures (%.1f min, %d %s events) to %s", manifest["n_mixtures"],
             manifest["n_mixtures"] * manifest["duration_s"] / 60, manifest["n_events"], manifest["target_class"],
             args.out)
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(parse_args()))
