"""Where the project's files are, for tests that read them (config/, systemd/, docs, the
conformance data)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
