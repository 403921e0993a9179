"""Generated and shipped files stay true: schemas, and the terminal's fast start."""

from __future__ import annotations

import subprocess
import sys

from acquisition.schemas import SCHEMA_DIR, render_schemas


def test_json_schemas_in_docs_are_current() -> None:
    for name, text in render_schemas().items():
        path = SCHEMA_DIR / name
        assert path.exists(), f"missing {path}; run `make schemas`"
        assert path.read_text(encoding="utf-8") == text, f"{name} is stale; run `make schemas`"


def test_assay_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from acquisition.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "mods = ('rich', 'aiomqtt', 'pydantic', 'paho', 'pyvisa')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: assay" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", f"imported at --help: {out.stdout}"
