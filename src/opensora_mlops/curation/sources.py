"""Where raw files come from: the bundled synthetic corpus or a folder of the user's own files.

A user folder holds videos (mp4, mov, mkv, webm, avi) and images (jpg, png, …), optionally with a
captions CSV ``path,text``. CSV paths are relative to the data root (or absolute) and must resolve
inside it — ``../../etc/passwd`` or a symlink out of the root is quarantined with reason
"path outside data root". The CSV is read as bytes and decoded row by row, so one caption in a wrong
encoding quarantines that row ("caption not valid UTF-8") instead of killing the whole file. A row
repeated word for word is merged (counted in ``duplicate_caption_rows``); two different captions for
one file quarantine that file once ("conflicting captions in CSV"): it is neither accepted nor counted
twice.

Captions strategy: :func:`check_caption_strategy` stops ingestion at once, with the fix in the
message, when no file has a caption and curation has neither the VLM nor a fallback configured.

Both sources return a *candidates* table (``path`` absolute, ``text``, ``source``) for the probe, and a
quarantine table (``path, reason, detail, stage``) for what never reaches it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.curation.probe import IMAGE_SUFFIXES, VIDEO_SUFFIXES, quarantine_frame
from opensora_mlops.curation.synthetic import (
    BROKEN_KINDS,
    SyntheticConfig,
    VideoTruth,
    generate_corpus,
)

REASON_OUTSIDE_ROOT = "path outside data root"
REASON_BAD_ENCODING = "caption not valid UTF-8"
REASON_CAPTION_FILE_MISSING = "captioned file not found"
REASON_CONFLICTING_CAPTIONS = "conflicting captions in CSV"
REASON_MALFORMED_ROW = "malformed captions CSV row"
REASON_UNSUPPORTED = "unsupported file type"
REASON_DUPLICATE_FILE = "duplicate file (link to a listed file)"
LIST_STAGE = "ingestion.list"

CANDIDATE_COLUMNS = ["path", "text", "source"]
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES


def candidates_frame(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=CANDIDATE_COLUMNS)
    for col in CANDIDATE_COLUMNS:
        df[col] = df[col].astype("str")
    return df


@dataclass(frozen=True)
class FolderSourceConfig:
    """``parameters_ingestion.yml`` → ``ingestion.folder``.

    ``root``: the data root, scanned recursively for media files. ``captions_csv``: optional CSV with a
    ``path,text`` header (relative paths are relative to ``root``; a relative CSV location is too).
    ``include_unsupported``: quarantine other non-hidden files (True) instead of ignoring them (False,
    counted in the summary either way).
    """

    root: str = "data/01_raw/user"
    captions_csv: str | None = None
    recursive: bool = True
    include_unsupported: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FolderSourceConfig:
        return strict_dataclass(cls, dict(values or {}), "ingestion.folder")


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _split_csv_records(data: bytes) -> list[bytes]:
    """Split CSV bytes into records at newlines outside double quotes.

    Works on bytes so a row with broken encoding does not stop the others: in UTF-8 (and every ASCII
    superset) the quote and newline bytes never occur inside a multi-byte character.
    """
    records, start, quoted = [], 0, False
    for i, byte in enumerate(data):
        if byte == 0x22:  # "
            quoted = not quoted
        elif byte == 0x0A and not quoted:  # \n
            records.append(data[start:i])
            start = i + 1
    if start < len(data):
        records.append(data[start:])
    return [r[:-1] if r.endswith(b"\r") else r for r in records]


@dataclass
class CaptionRows:
    captions: dict[Path, str]  # resolved path -> caption
    quarantine: list[dict[str, str]]
    rejected: set[Path]  # files whose caption row could not be read or conflicts: quarantined, not ingested
    duplicate_rows: int = 0  # rows repeating an earlier row exactly (merged)


def read_captions_csv(csv_path: str | Path, root: str | Path) -> CaptionRows:
    """Read a ``path,text`` captions CSV; bad rows go to quarantine, one by one."""
    csv_path, root = Path(csv_path), Path(root).resolve()
    data = csv_path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        data = data[3:]
    records = [r for r in _split_csv_records(data) if r.strip()]
    if not records:
        raise ConfigError(f"captions CSV {csv_path} is empty; expected a header 'path,text'")
    try:
        header = next(csv.reader([records[0].decode("utf-8")]))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"captions CSV {csv_path}: header is not valid UTF-8") from exc
    header = [h.strip().lower() for h in header]
    if "path" not in header or "text" not in header:
        raise ConfigError(f"captions CSV {csv_path} needs columns 'path' and 'text', found {header}")
    i_path, i_text = header.index("path"), header.index("text")

    captions: dict[Path, str] = {}
    lines: dict[Path, int] = {}
    quarantine: list[dict[str, str]] = []
    rejected: set[Path] = set()
    conflicts: dict[Path, list[int]] = {}
    duplicates = 0

    def bad(path: str, reason: str, detail: str) -> None:
        quarantine.append({"path": path, "reason": reason, "detail": detail, "stage": LIST_STAGE})

    for line_no, record in enumerate(records[1:], start=2):
        try:
            text_record = record.decode("utf-8")
        except UnicodeDecodeError as exc:
            # name the file: decode the row leniently just to find its path field
            lenient = next(csv.reader([record.decode("utf-8", errors="replace")]), [])
            where = lenient[i_path] if len(lenient) > i_path else f"{csv_path}:{line_no}"
            target = _resolve_for_report(where, root)
            bad(target, REASON_BAD_ENCODING,
                f"{csv_path.name} line {line_no}: byte {record[exc.start]:#04x} at offset {exc.start}")
            rejected.add(Path(target))
            continue
        fields = next(csv.reader(io.StringIO(text_record)), [])
        if len(fields) <= max(i_path, i_text) or not fields[i_path].strip():
            bad(f"{csv_path}:{line_no}", REASON_MALFORMED_ROW, f"{csv_path.name} line {line_no}: {text_record[:80]!r}")
            continue
        raw_path, text = fields[i_path].strip(), fields[i_text].strip()
        candidate = Path(raw_path) if Path(raw_path).is_absolute() else root / raw_path
        resolved = candidate.resolve()
        if not _inside(resolved, root):
            bad(raw_path, REASON_OUTSIDE_ROOT, f"{raw_path} resolves to {resolved}, outside {root}")
            continue
        if not resolved.is_file():
            bad(str(resolved), REASON_CAPTION_FILE_MISSING, f"{csv_path.name} line {line_no}: {raw_path}")
            continue
        if resolved in captions:
            if captions[resolved] == text:
                duplicates += 1  # the same row twice: one file, one caption
            else:
                conflicts.setdefault(resolved, [lines[resolved]]).append(line_no)
            continue
        captions[resolved] = text
        lines[resolved] = line_no
    for path, numbers in conflicts.items():  # which caption is right? the user must say: the file waits
        del captions[path]
        bad(str(path), REASON_CONFLICTING_CAPTIONS,
            f"{csv_path.name} lines {', '.join(map(str, numbers))} give different captions; keep one row")
        rejected.add(path)
    return CaptionRows(captions, quarantine, rejected - set(captions), duplicates)


def _resolve_for_report(raw_path: str, root: Path) -> str:
    p = Path(raw_path)
    return str((p if p.is_absolute() else root / p).resolve())


def list_folder(cfg: FolderSourceConfig | Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Candidates from a user folder: ``(candidates, quarantine, counts)``.

    Every media file under ``root`` is a candidate (with its caption if the CSV has one), except files
    whose caption row could not be decoded: those are quarantined (a caption the user wrote but we cannot
    read must not silently become an uncaptioned training sample). Other bad CSV rows (outside the root,
    missing file, duplicate) are quarantined as rows; the files they name are unaffected.
    """
    if not isinstance(cfg, FolderSourceConfig):
        cfg = FolderSourceConfig.from_dict(cfg)
    root = Path(cfg.root).resolve()
    if not root.is_dir():
        raise ConfigError(f"ingestion.folder.root {cfg.root!r} is not a directory (resolved: {root})")
    captions = CaptionRows({}, [], set())
    csv_resolved = None
    if cfg.captions_csv:
        csv_path = Path(cfg.captions_csv)
        if not csv_path.is_absolute() and not csv_path.exists():
            csv_path = root / csv_path
        if not csv_path.is_file():
            raise ConfigError(f"ingestion.folder.captions_csv {cfg.captions_csv!r} not found")
        csv_resolved = csv_path.resolve()
        captions = read_captions_csv(csv_path, root)

    pattern = "**/*" if cfg.recursive else "*"
    candidates, quarantine = [], list(captions.quarantine)
    listed: set[Path] = set()
    counts = {"hidden_files_ignored": 0, "unsupported_files_ignored": 0,
              "duplicate_caption_rows": captions.duplicate_rows}
    # real files before symlinks, so a link to a listed file is the one reported as the duplicate
    for path in sorted(root.glob(pattern), key=lambda p: (p.is_symlink(), p)):
        if not path.is_file() and not path.is_symlink():
            continue
        rel_parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel_parts):
            counts["hidden_files_ignored"] += 1
            continue
        resolved = path.resolve()
        if csv_resolved is not None and resolved == csv_resolved:
            continue
        if not _inside(resolved, root):  # a symlink pointing out of the data root
            quarantine.append({"path": str(path), "reason": REASON_OUTSIDE_ROOT,
                               "detail": f"symlink to {resolved}, outside {root}", "stage": LIST_STAGE})
            continue
        if resolved in captions.rejected:  # already quarantined for its caption
            continue
        if path.suffix.lower() not in MEDIA_SUFFIXES:
            if cfg.include_unsupported:
                quarantine.append({"path": str(resolved), "reason": REASON_UNSUPPORTED,
                                   "detail": f"suffix {path.suffix!r}", "stage": LIST_STAGE})
            else:
                counts["unsupported_files_ignored"] += 1
            continue
        if resolved in listed:  # two links to one file: probing and training it twice would skew the data
            quarantine.append({"path": str(path), "reason": REASON_DUPLICATE_FILE,
                               "detail": f"same file as {resolved}", "stage": LIST_STAGE})
            continue
        listed.add(resolved)
        candidates.append({"path": str(resolved), "text": captions.captions.get(resolved), "source": "folder"})
    return candidates_frame(candidates), quarantine_frame(quarantine), counts


def synthetic_candidates(out_dir: str | Path, cfg: SyntheticConfig | Mapping[str, Any] | None,
                         progress: bool = True, reuse: bool = True) -> tuple[pd.DataFrame, list[VideoTruth]]:
    """Generate (or reuse, see :func:`generate_corpus`) the synthetic corpus in ``out_dir``; candidates
    carry the ground-truth video captions.

    Broken files get no caption (they have no frames); the probe quarantines them.
    """
    videos = generate_corpus(out_dir, cfg, progress=progress, reuse=reuse)
    root = Path(out_dir).resolve()
    rows = [
        {"path": str(root / v.path), "text": None if v.kind in BROKEN_KINDS else v.caption, "source": "synthetic"}
        for v in videos
    ]
    return candidates_frame(rows), videos


def check_caption_strategy(candidates: pd.DataFrame, captions: Mapping[str, Any] | None, root: str) -> int:
    """Refuse (``CaptionSourceError``, at once, naming ``captions_csv`` and the VLM option) a folder in
    which no media file has a caption while curation would drop uncaptioned clips; returns how many
    candidates have no caption (curation drops or falls back for those)."""
    from opensora_mlops.curation.captions import CaptionSourceError, caption_strategy_problem, clean_caption

    texts = candidates["text"].tolist() if "text" in candidates.columns else []
    problem = caption_strategy_problem(texts, captions, f"none of the {len(texts)} media files under {root} has "
                                       "a caption")
    if problem:
        raise CaptionSourceError(problem)
    return sum(1 for t in texts if not clean_caption(t))
