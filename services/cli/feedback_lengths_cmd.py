"""`alise predictor feedback-lengths export|restore`: feedback files kept in the repository without
their prompt texts, rebuilt byte for byte from ../shared/data (services/predictor/feedback_lengths.py).

    export  --feedback FILE --out LENGTHS_FILE --num-sharegpt N --num-alpaca N --max-prompt-chars N [--seed 0]
    restore --lengths LENGTHS_FILE [--lengths ...] --out-dir DIR      -> DIR/<original name>, same sha256

The texts come from the collect-lengths prompt list (collect_lengths_prompt_list.py: the same
loading, deduplication and ids that sent the prompts), so export takes the collect-lengths flags the
feedback was collected with and the lengths file records them for restore; restore builds each
distinct list once, however many files name it. It lives in services/cli because the predictor
package may not import the workload loader (services.bench).
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Iterable, Iterator, Mapping

from services.cli.collect_lengths_prompt_list import load_prompt_list
from services.common import arg_types
from services.predictor.feedback_lengths import (
    LengthsFile,
    PromptListSettings,
    export_lengths,
    parse_lengths,
    prompt_ids,
    restore_feedback,
    sha256_hex,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "feedback-lengths", help="feedback files without prompt texts (repository) <-> with them (../shared/data)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write a feedback file's text-free lengths file")
    export.add_argument("--feedback", type=pathlib.Path, required=True, help="feedback-YYYYMMDD.jsonl")
    export.add_argument("--out", type=pathlib.Path, required=True, help="lengths file to write")
    for flag in ("--num-sharegpt", "--num-alpaca"):
        export.add_argument(flag, type=arg_types.non_negative_int, required=True, help="as given to collect-lengths")
    export.add_argument("--max-prompt-chars", type=arg_types.positive_int, required=True, help="as collect-lengths")
    export.add_argument("--seed", type=int, default=0, help="as given to collect-lengths")
    export.add_argument("--data-dir", type=pathlib.Path, default=None, help="shared data (default ../shared/data)")
    export.set_defaults(handler=run_export)
    restore = actions.add_parser("restore", help="rebuild feedback files from lengths files and the shared data")
    restore.add_argument("--lengths", type=pathlib.Path, action="append", required=True, help="repeatable")
    restore.add_argument("--out-dir", type=pathlib.Path, required=True, help="feedback directory to write into")
    restore.add_argument("--data-dir", type=pathlib.Path, default=None, help="shared data (default ../shared/data)")
    restore.set_defaults(handler=run_restore)


def run_export(args: argparse.Namespace) -> int:
    settings = PromptListSettings(args.num_sharegpt, args.num_alpaca, args.max_prompt_chars, args.seed)
    prompts = load_prompt_list(settings, args.data_dir)
    feedback = args.feedback.read_bytes()
    lengths = export_lengths(feedback, feedback_file=args.feedback.name, prompts=prompts, prompt_list=settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(lengths.to_text(), encoding="utf-8")
    restored = restore_feedback(parse_lengths(args.out.read_text(encoding="utf-8")), prompts)
    print(f"{args.feedback}: {lengths.header.num_records} records, sha256 {sha256_hex(feedback)}")
    print(f"{args.out}: restored from it in memory: sha256 {sha256_hex(restored)} (byte-identical)")
    _print_coverage([lengths], prompts)
    return 0


def run_restore(args: argparse.Namespace) -> int:
    files = [parse_lengths(path.read_text(encoding="utf-8")) for path in args.lengths]
    for path, (lengths, restored, prompts) in zip(args.lengths, restore_each(files, args.data_dir), strict=True):
        out = args.out_dir / lengths.header.feedback_file
        _write_new(out, restored)
        print(f"{path} -> {out}: {lengths.header.num_records} records, sha256 {sha256_hex(restored)} (as recorded)")
        _print_coverage([lengths], prompts)
    return 0


def restore_each(
    files: Iterable[LengthsFile], data_dir: pathlib.Path | None
) -> Iterator[tuple[LengthsFile, bytes, Mapping[str, str]]]:
    """Each lengths file with its original feedback bytes (FeedbackLengthsError unless their sha256 is the
    header's) and the prompt list its texts came from, in order. Lazy, and each distinct list is built once
    however many files name it: files collected from one list share it, and building one reads the data.
    The restore command and the simulator's shipped feedback (services/bench/sim/shipped_feedback.py) use it."""
    lists: dict[PromptListSettings, dict[str, str]] = {}
    for lengths in files:
        settings = lengths.header.prompt_list
        if settings not in lists:
            lists[settings] = load_prompt_list(settings, data_dir)
        yield lengths, restore_feedback(lengths, lists[settings]), lists[settings]


def _write_new(path: pathlib.Path, data: bytes) -> None:
    """Writes data unless path holds other bytes already (real feedback is never overwritten)."""
    if path.exists():
        if path.read_bytes() != data:
            raise ValueError(f"{path} exists with other contents; restore into an empty directory")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)  # a reader never sees half a file


def _print_coverage(files: list[LengthsFile], prompts: Mapping[str, str]) -> None:
    answered = prompt_ids(files)
    print(f"prompt list: {len(prompts)} prompts, {len(answered)} answered here, {len(prompts) - len(answered)} not")
