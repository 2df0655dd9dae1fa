"""Write docs/configuration.md from the settings in imgaudit/config.py (`make docs` runs this)."""

from pathlib import Path

from imgaudit.config_reference import render

target = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
target.write_text(render(), encoding="utf-8")
print(f"wrote {target}")
