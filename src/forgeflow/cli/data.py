"""`forgeflow data ...`: prepare train/test files and validate chat JSONL before fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from forgeflow.cli.common import command, console, err_console, print_json
from forgeflow.errors import InvalidInput

app = typer.Typer(
    help="Prepare chat datasets (download + 80/20 split) and validate chat JSONL files.",
    no_args_is_help=True,
)


def _test_size(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"--test-size: {value!r} is not a number (a fraction like 0.2, or a row count)",
                           field="test_size") from None
    return int(number) if number.is_integer() and number >= 1 else number


@app.command()
@command
def prepare(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            metavar="NAME_OR_PATH",
            help="`sample` (shipped Quillfeather chats), a local .jsonl/.json/.csv/.parquet file or folder, "
            "or a Hugging Face dataset name such as HuggingFaceH4/ultrachat_200k (local HF cache when offline).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write train_data.jsonl and test_data.jsonl into.")
    ],
    config: Annotated[str | None, typer.Option(help="Dataset configuration name on the hub, e.g. default.")] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to load, with optional slice: train_sft[:1%], train[:100]. "
            "Local files have one split; its slice is kept and the name ignored."
        ),
    ] = None,
    test_size: Annotated[
        str, typer.Option("--test-size", help="Test share, a fraction in (0, 1), or a row count (e.g. 50).")
    ] = "0.2",
    seed: Annotated[int, typer.Option(help="Seed for the reproducible train/test shuffle.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Load a chat dataset, split it train/test and write train_data.jsonl / test_data.jsonl."""
    from forgeflow.data.prepare import prepare_dataset

    size = _test_size(test_size)
    if as_json:
        print_json(prepare_dataset(dataset, out, config=config, split=split, test_size=size, seed=seed).to_dict())
        return
    with err_console.status(f"Preparing {escape(dataset)} ..."):
        result = prepare_dataset(dataset, out, config=config, split=split, test_size=size, seed=seed)
    table = Table(title=f"Prepared {escape(result.source)}", title_justify="left")
    for column in ("split", "rows", "file"):
        table.add_column(column)
    table.add_row("train", str(result.train_rows), escape(str(result.train_path)))
    table.add_row("test", str(result.test_rows), escape(str(result.test_path)))
    table.add_row("total", str(result.total_rows), "")
    console.print(table)


@app.command()
@command
def validate(
    file: Annotated[Path, typer.Argument(help="File to check: .jsonl (also .json array, .csv, .parquet).")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            metavar="sft|dpo",
            help="Training method the file is for: sft checks chat rows ('messages'), dpo preference rows "
            "('prompt', 'chosen', 'rejected').",
        ),
    ] = "sft",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="PATH",
            help="Local Hugging Face model folder; its tokenizer's chat template gives token lengths "
            "(character lengths without it).",
        ),
    ] = None,
    max_problems: Annotated[
        int | None, typer.Option("--max-problems", help="Stop listing after this many problems.", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Check every row of a training file (chat rows, or preference rows with --method dpo); list each problem with
    its line number (exit 1 if any)."""
    from forgeflow.data.validate import row_check, validate_file

    method = method.strip()
    try:
        row_check(method)
    except InvalidInput as exc:
        raise InvalidInput(f"--method {exc.message.removeprefix('method ')}", field="method") from None
    tokenizer = _load_tokenizer(model) if model else None
    report = validate_file(file, tokenizer=tokenizer, max_problems=max_problems, method=method)
    if as_json:
        print_json({"method": method} | report.to_dict())
    elif report.problems:
        for problem in report.problems:
            typer.echo(f"{file}: {problem}")
        more = " (list truncated)" if report.truncated else ""
        err_console.print(
            f"[red]{report.bad_rows} bad row(s) of {report.rows} in {escape(str(file))}{more}[/red]", soft_wrap=True
        )
        if report.fits_method:
            err_console.print(f"every row is {_SHAPES[report.fits_method]}: validate it with --method "
                              f"{report.fits_method}", soft_wrap=True)
    else:
        console.print(_summary_table(report, method))
    if not report.ok:
        raise typer.Exit(1)


# How the hint names the row shape of each method.
_SHAPES = {"sft": "a chat row ('messages'), which method sft trains on",
           "dpo": "a preference row (prompt, chosen, rejected), which method dpo trains on"}


def _summary_table(report: Any, method: str) -> Table:
    table = Table(title=f"{escape(str(report.path))}: OK ({method})", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("rows" if method == "sft" else "preference pairs", str(report.rows))
    messages = "messages" if method == "sft" else "messages (prompt + chosen)"
    table.add_row(messages, f"{report.turns} ({report.mean_turns} per row)")
    if report.blank_lines:
        table.add_row("blank lines", str(report.blank_lines))
    if report.lengths:
        stats = report.lengths
        table.add_row(
            f"length ({report.length_unit})",
            f"min {stats.min}  mean {stats.mean}  p50 {stats.p50}  p95 {stats.p95}  max {stats.max}",
        )
    return table


def _load_tokenizer(model: str) -> Any:
    """A tokenizer from a local model folder (catalog names are resolved elsewhere)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InvalidInput(f"--model {model}: not a local model folder (give a path to a Hugging Face model directory)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise InvalidInput(f"--model {model}: cannot load a tokenizer: {exc}", field="model") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(f"--model {model}: the tokenizer has no chat template", field="model")
    return tokenizer
