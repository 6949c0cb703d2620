"""Export ground truth for the customer-profile example: a labels file.

Some users tell their gender later (a profile form, a delivery address): that truth is
what the predictions are judged by. This takes a share of the users of `features.db`,
each with the moment their gender was observed, spread over the days before `--end`.
Deterministic for a given seed, share, days and end.

    python make_labels.py [--share 0.4] [--days 28] [--end 2025-01-31] [--out labels.csv]

then `modelyard feedback load examples/customer-profile labels.csv` and
`modelyard metrics examples/customer-profile --plot quality.png`.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def labels(
    database: Path, share: float, days: int, end: datetime, seed: int
) -> list[tuple[str, str, str]]:
    """(user_id, gender, observed_at) for ``share`` of the users, observed in the
    ``days`` before ``end``."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        users = db.execute("SELECT user_id, gender FROM users ORDER BY user_id").fetchall()
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(users)) < share
    seconds = rng.integers(0, days * 86_400, len(users))
    start = end - timedelta(days=days)
    return [
        (user, gender, (start + timedelta(seconds=int(s))).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for (user, gender), pick, s in zip(users, chosen, seconds, strict=True)
        if pick
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=Path, default=HERE / "features.db")
    parser.add_argument("--share", type=float, default=0.4, help="share of users labelled")
    parser.add_argument("--days", type=int, default=28, help="days the labels are spread over")
    parser.add_argument(
        "--end",
        type=lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC),
        default=datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0),
        help="the day after the last observation (default: today, UTC)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("labels.csv"))
    args = parser.parse_args()
    rows = labels(args.database, args.share, args.days, args.end, args.seed)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "label", "observed_at"])
        writer.writerows(rows)
    print(f"wrote {len(rows):,} labels to {args.out}")


if __name__ == "__main__":
    main()
