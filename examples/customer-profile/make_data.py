"""Generate the synthetic users/events database of the customer-profile example.

Deterministic for a given seed and size: `users` (id, age, country, and the `gender`
label the model learns) and `events` (what each user browsed and spent), where the
categories a user browses lean one way or the other with their gender, as in real
profiling data, with plenty of overlap.

    python make_data.py [--users 5000] [--seed 7] [--out features.db]
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CATEGORIES = ["beauty", "fashion", "home", "books", "sports", "electronics", "gaming", "diy"]
# How much more (>1) or less (<1) often a male user browses a category than a female one.
MALE_LEAN = np.array([0.6, 0.75, 0.95, 1.0, 1.3, 1.4, 1.5, 1.25])
COUNTRIES = ["FR", "DE", "ES", "IT", "NL", "PL"]
EVENTS_PER_USER = 20


def generate(users: int, seed: int) -> tuple[list[tuple], list[tuple]]:
    rng = np.random.default_rng(seed)
    male = rng.random(users) < 0.5
    age = np.clip(rng.normal(38, 12, users), 18, 85).astype(int)
    country = rng.choice(COUNTRIES, users)
    # Each user's own taste, pulled towards their gender's lean.
    base = rng.dirichlet(np.ones(len(CATEGORIES)) * 2.0, users)
    taste = base * np.where(male[:, None], MALE_LEAN, 1.0 / MALE_LEAN)
    taste /= taste.sum(axis=1, keepdims=True)
    counts = rng.poisson(EVENTS_PER_USER, users)
    user_rows = [
        (f"u{i:07d}", int(age[i]), str(country[i]), "male" if male[i] else "female")
        for i in range(users)
    ]
    event_rows = []
    for i in range(users):
        categories = rng.choice(len(CATEGORIES), counts[i], p=taste[i])
        amounts = np.round(rng.gamma(2.0, 15.0 + 2.0 * male[i], counts[i]), 2)
        event_rows.extend(
            (f"u{i:07d}", CATEGORIES[c], float(a)) for c, a in zip(categories, amounts, strict=True)
        )
    return user_rows, event_rows


def write(path: Path, users: list[tuple], events: list[tuple]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.executescript(
            """
            CREATE TABLE users (
                user_id TEXT PRIMARY KEY, age INTEGER NOT NULL, country TEXT NOT NULL,
                gender TEXT NOT NULL
            );
            CREATE TABLE events (
                user_id TEXT NOT NULL REFERENCES users (user_id), category TEXT NOT NULL,
                amount REAL NOT NULL
            );
            """
        )
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", users)
        db.executemany("INSERT INTO events VALUES (?, ?, ?)", events)
        db.execute("CREATE INDEX events_user_id ON events (user_id)")
    tmp.replace(path)  # a reader never sees a half-written database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "features.db")
    args = parser.parse_args()
    users, events = generate(args.users, args.seed)
    write(args.out, users, events)
    print(f"{args.out}: {len(users)} users, {len(events)} events")


if __name__ == "__main__":
    main()
